"""Self and inclusive shares per symbol from `perf script -F ip,sym,dso` output.

perf 6.1 (Debian bookworm's linux-perf) cannot read the release binary's symbols: it prints raw
addresses for lld's segment layout. This resolves the binary's frames with `nm` (perf gives file
offsets; the symbols are at virtual addresses) and keeps perf's names for the kernel and libraries.

    python3 scripts/perf-symbols.py BINARY PERF_SCRIPT_OUTPUT [SELF_ROWS] [INCLUSIVE_ROWS]
    python3 scripts/perf-symbols.py --by-crate BINARY PERF_SCRIPT_OUTPUT

`--by-crate` gives each sample to the kernel when it was in the kernel, else to the crate of its
innermost frame in the binary (so a libc call or a memcpy counts for the crate that made it);
frames of a C binary count as the binary.
"""

import bisect
import collections
import re
import subprocess
import sys


def load_symbols(binary):
    out = subprocess.run(
        ["nm", "-n", "-C", "--defined-only", binary], capture_output=True, text=True, check=True
    ).stdout
    symbols = []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            symbols.append((int(parts[0], 16), parts[2]))
    return symbols


def load_segments(binary):
    """(file offset, virtual address, size) of each LOAD segment."""
    out = subprocess.run(["readelf", "-l", "-W", binary], capture_output=True, text=True).stdout
    segments = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            segments.append((int(f[1], 16), int(f[2], 16), int(f[4], 16)))
    return segments


def crate(frame):
    """`tokio` of `tokio::runtime::...` and of `<tokio::net::TcpStream as ...>::poll`."""
    m = re.match(r"<*([a-z_][a-z_0-9]*)::", frame)
    return m.group(1) if m else None


def main():
    args = sys.argv[1:]
    by_crate = args[:1] == ["--by-crate"]
    if by_crate:
        args = args[1:]
    sys.argv = [sys.argv[0]] + args
    binary, script = sys.argv[1], sys.argv[2]
    self_rows = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    inclusive_rows = int(sys.argv[4]) if len(sys.argv) > 4 else 60
    symbols = load_symbols(binary)
    addresses = [a for a, _ in symbols]
    segments = load_segments(binary)
    base = binary.rsplit("/", 1)[-1]

    def name(offset):
        address = offset
        for file_offset, vaddr, size in segments:
            if file_offset <= offset < file_offset + size:
                address = offset - file_offset + vaddr
                break
        i = bisect.bisect_right(addresses, address) - 1
        found = symbols[i][1] if i >= 0 else hex(address)
        return re.sub(r"::h[0-9a-f]{16}$", "", found)[:150]

    own, inclusive, objects = collections.Counter(), collections.Counter(), collections.Counter()
    crates = collections.Counter()
    total = 0
    stack = []

    def flush():
        nonlocal total
        if not stack:
            return
        total += 1
        frames = []
        for ip, sym, dso in stack:
            if dso.endswith(base):
                frames.append(name(int(ip, 16)))
            elif "kernel" in dso:
                frames.append("[k] " + sym)
            else:
                frames.append(dso.rsplit("/", 1)[-1] + " " + sym)
        own[frames[0]] += 1
        if "kernel" in stack[0][2]:
            crates["kernel"] += 1
        else:
            inner = next((f for f, (_, _, dso) in zip(frames, stack) if dso.endswith(base)), None)
            crates[(crate(inner) or base) if inner else stack[0][2].rsplit("/", 1)[-1]] += 1
        top_dso = stack[0][2]
        if top_dso.endswith(base):
            objects[base] += 1
        elif "kernel" in top_dso:
            objects["kernel"] += 1
        else:
            objects[top_dso.rsplit("/", 1)[-1]] += 1
        for frame in set(frames):
            inclusive[frame] += 1

    with open(script, errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if not line.strip():
                flush()
                stack = []
                continue
            m = re.match(r"\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)$", line)
            if m:
                ip, sym, dso = m.groups()
                stack.append((ip, re.sub(r"\+0x[0-9a-f]+$", "", sym), dso))
    flush()
    if total == 0:
        print("no samples")
        return
    print(f"{total} samples")
    if by_crate:
        print("by crate (kernel, else the innermost frame in the binary):")
        print(", ".join(f"{c} {100 * n / total:.1f}%" for c, n in crates.most_common(12)))
        return
    print("self, by object: " + ", ".join(f"{o} {100 * n / total:.1f}%" for o, n in objects.most_common(6)))
    print("self:")
    for frame, n in own.most_common(self_rows):
        print(f"{100 * n / total:6.2f}%  {frame}")
    print("inclusive:")
    for frame, n in inclusive.most_common(inclusive_rows):
        print(f"{100 * n / total:6.2f}%  {frame}")


if __name__ == "__main__":
    main()

"""Self and inclusive time per symbol from `perf script` output, resolving the agent binary's
addresses with nm (perf 6.1 cannot read symbols of this Rust binary)."""
import bisect, collections, re, subprocess, sys
binary, script = sys.argv[1], sys.argv[2]
syms = []
for line in subprocess.run(["nm", "-n", "-C", "--defined-only", binary], capture_output=True, text=True).stdout.splitlines():
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[1] in "tTwW":
        syms.append((int(parts[0], 16), parts[2]))
addrs = [a for a, _ in syms]
# perf gives addresses as file offsets; the symbols are at virtual addresses (lld puts the text
# segment at offset + 0x1000): shift by the segment that holds the offset.
loads = []
for line in subprocess.run(["readelf", "-l", "-W", binary], capture_output=True, text=True).stdout.splitlines():
    f = line.split()
    if f and f[0] == "LOAD":
        loads.append((int(f[1], 16), int(f[2], 16), int(f[4], 16)))
def vaddr(off):
    for o, v, size in loads:
        if o <= off < o + size:
            return off - o + v
    return off
def name(addr):
    i = bisect.bisect_right(addrs, addr) - 1
    return syms[i][1] if i >= 0 else hex(addr)
def short(s):
    s = re.sub(r"::h[0-9a-f]{16}$", "", s)
    return s[:150]
base = binary.rsplit("/", 1)[-1]
selfc, incl = collections.Counter(), collections.Counter()
total = 0
stack = []
def flush():
    global total
    if not stack: return
    total += 1
    frames = []
    for ip, sym, dso in stack:
        if dso.endswith(base):
            frames.append(short(name(vaddr(int(ip, 16)))))
        elif "kernel" in dso:
            frames.append("[k] " + sym)
        else:
            frames.append(dso.rsplit("/", 1)[-1] + " " + sym)
    selfc[frames[0]] += 1
    for f in set(frames):
        incl[f] += 1
for line in open(script, errors="replace"):
    line = line.rstrip("\n")
    if not line.strip():
        flush(); stack = []; continue
    m = re.match(r"\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)$", line)
    if m:
        ip, sym, dso = m.groups()
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        stack.append((ip, sym, dso))
flush()
print(f"{total} samples")
print("self:")
for f, n in selfc.most_common(int(sys.argv[3]) if len(sys.argv) > 3 else 40):
    print(f"{100*n/total:6.2f}%  {f}")
print("inclusive:")
for f, n in incl.most_common(int(sys.argv[4]) if len(sys.argv) > 4 else 60):
    print(f"{100*n/total:6.2f}%  {f}")

"""Each round of `scripts/proxy-bench.sh` against nginx's in the same round, and the medians.

The machine's neighbours move a round's figures by 5-20 %, so a proxy is compared with nginx
round by round (same conditions), and the rounds are summarised by their median and by how many
of them came out better or equal.

    sh scripts/proxy-bench.sh > bench.txt; python3 scripts/proxy-bench-summary.py bench.txt
"""

import re
import statistics
import sys


def rounds(path):
    """[(connections, {target: (requests/s, p99 added µs, CPU µs per request)})] in order."""
    out = []
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 8 or not re.match(r"(direct|nginx|agent)", cells[0]):
            continue
        name, conns = cells[0], int(cells[1])
        if name == "direct":
            out.append((conns, {}))
            continue
        if not out:
            continue
        p99_added = float(cells[6]) if cells[6] != "-" else None
        out[-1][1][name] = (float(cells[2]), p99_added, float(cells[7]))
    return out


def main():
    data = rounds(sys.argv[1])
    for conns in sorted({c for c, _ in data}):
        these = [r for c, r in data if c == conns and "nginx" in r]
        agents = [k for k in these[0] if k.startswith("agent")]
        print(f"{conns} connection(s), {len(these)} round(s): each against nginx in its round")
        print("| round | nginx: CPU µs, requests/s, p99 added µs | " + " | ".join(agents) + " |")
        for i, r in enumerate(these, 1):
            n = r["nginx"]
            cells = [
                f"{100 * (r[a][2] / n[2] - 1):+.1f} %, {100 * (r[a][0] / n[0] - 1):+.1f} %, "
                f"{r[a][1] - n[1]:+.0f} µs"
                for a in agents
            ]
            print(f"| {i} | {n[2]:.2f}, {n[0]:,.0f}, {n[1]:.0f} | " + " | ".join(cells) + " |")
        for a in agents:
            cpu = [r[a][2] / r["nginx"][2] - 1 for r in these]
            rps = [r[a][0] / r["nginx"][0] - 1 for r in these]
            p99 = [r[a][1] - r["nginx"][1] for r in these]
            print(
                f"median, {a}: CPU per request {100 * statistics.median(cpu):+.1f} % "
                f"(at or below nginx in {sum(c <= 0 for c in cpu)} of {len(cpu)}), "
                f"requests/s {100 * statistics.median(rps):+.1f} % "
                f"(at or above in {sum(c >= 0 for c in rps)}), "
                f"p99 added {statistics.median(p99):+.0f} µs (no worse in {sum(c <= 0 for c in p99)})"
            )
        print()


if __name__ == "__main__":
    main()

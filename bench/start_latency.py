#!/usr/bin/env python3
"""Start latency of two commands, side by side.

A and B run in turn (A B A B ...), each after an optional pause, so both
see the same moments of a machine whose speed drifts. Each run's wall time
and CPU time (user + system of the process and of every child it waited
for, as wait4 reports them) are kept. Prints, per command, the medians, and
the ratios A/B: of the medians, and the median of the pair-by-pair ratios.

Usage: start_latency.py [--runs N] [--warmup N] [--pause S] LABEL_A LABEL_B -- A... ::: B...
The last line is machine-readable:
  LABEL_A/LABEL_B pause=S wall_a_ms=.. wall_b_ms=.. wall_ratio=.. wall_paired=.. cpu_a_ms=.. cpu_b_ms=.. cpu_ratio=.. cpu_paired=..
"""

import argparse
import os
import statistics
import subprocess
import sys
import time


def run(cmd):
    """Wall and CPU seconds of one run; the command must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        sys.exit(f"{' '.join(cmd)} failed with {proc.returncode}: {err.strip()}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds of quiet before each run")
    parser.add_argument("label_a")
    parser.add_argument("label_b")
    parser.add_argument("commands", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    words = args.commands[1:] if args.commands[:1] == ["--"] else args.commands
    if ":::" not in words:
        parser.error("give the two commands as A... ::: B...")
    split = words.index(":::")
    a, b = words[:split], words[split + 1 :]
    for _ in range(args.warmup):
        run(a)
        run(b)
    runs = {"a": [], "b": []}
    for _ in range(args.runs):
        for key, cmd in (("a", a), ("b", b)):
            if args.pause:
                time.sleep(args.pause)
            runs[key].append(run(cmd))

    def med(key, i):
        return statistics.median(r[i] for r in runs[key]) * 1000

    def paired(i):
        return statistics.median(x[i] / y[i] for x, y in zip(runs["a"], runs["b"]) if y[i] > 0)

    wall_a, wall_b, cpu_a, cpu_b = med("a", 0), med("b", 0), med("a", 1), med("b", 1)
    print(f"{args.label_a}: wall {wall_a:.1f} ms, cpu {cpu_a:.1f} ms (medians of {args.runs}, pause {args.pause} s)")
    print(f"{args.label_b}: wall {wall_b:.1f} ms, cpu {cpu_b:.1f} ms")
    print(
        f"{args.label_a}/{args.label_b} pause={args.pause} wall_a_ms={wall_a:.1f} wall_b_ms={wall_b:.1f} "
        f"wall_ratio={wall_a / wall_b:.2f} wall_paired={paired(0):.2f} cpu_a_ms={cpu_a:.1f} cpu_b_ms={cpu_b:.1f} "
        f"cpu_ratio={cpu_a / cpu_b:.2f} cpu_paired={paired(1):.2f}"
    )


if __name__ == "__main__":
    main()

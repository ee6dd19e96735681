#!/usr/bin/env python3
"""Summary of per-block traces written by the CUDA bench built with -DHL_BLOCK_TRACE=ON.

Each input line: unit kernel block resident_ns start_ns end_ns sm (kernels/cuda/block_trace.cuh).
Prints, per kernel of the last step traced, its working blocks' first start, last end and median duration in us from
the step's first resident block, and for the scaled chunk-state pass (the backward's reverse
pass) how many of its blocks started before the query kernel's first block ended (beside it).

  scripts/trace_summary.py TRACE.txt [...]
"""
import statistics
import sys

# In the order of block_trace::Kernel (kernels/cuda/block_trace.cuh).
NAMES = ["state pass", "scaled state pass", "forward", "query", "u combine", "fused key"]
QUERY, SCALED_PASS = 3, 1
IDLE_US = 3.0  # blocks shorter than this had nothing to do (a skipped segment)
GAP_NS = 100_000  # kernels of one step follow each other closer than this


def summarize(path):
    blocks = {}
    for line in open(path):
        _, kernel, _, resident, start, end, _ = line.split()
        blocks.setdefault(int(kernel), []).append((int(resident), int(start), int(end)))
    # Records stay from earlier benchmarks' launches of kernels this one did not launch, and of
    # block indices past this one's grids: keep the last step's, the blocks that chain back
    # from the last end with no idle gap over GAP_NS.
    spans = sorted(((r[1], r[2]) for v in blocks.values() for r in v), key=lambda x: -x[1])
    step_start = spans[0][0] if spans else 0
    for start, end in spans:
        if end < step_start - GAP_NS:
            break
        step_start = min(step_start, start)
    blocks = {k: [r for r in v if r[1] >= step_start] for k, v in blocks.items()}
    blocks = {k: v for k, v in blocks.items() if v}
    if not blocks:
        print(f"{path}: no records (was the bench built with -DHL_BLOCK_TRACE=ON?)")
        return
    t0 = min(r[0] for kernel in blocks.values() for r in kernel)
    us = lambda ns: (ns - t0) / 1e3
    print(path)
    for kernel in sorted(blocks, key=lambda k: min(r[1] for r in blocks[k])):
        working = [r for r in blocks[kernel] if (r[2] - r[1]) / 1e3 > IDLE_US] or blocks[kernel]
        durations = [(r[2] - r[1]) / 1e3 for r in working]
        line = (f"  {NAMES[kernel]:18s} blocks {len(working):4d}  start {us(min(r[1] for r in working)):7.1f}"
                f"  end {us(max(r[2] for r in working)):7.1f}  block us median {statistics.median(durations):6.1f}"
                f" max {max(durations):6.1f}")
        if kernel == SCALED_PASS and QUERY in blocks:
            first_query_end = min(r[2] for r in blocks[QUERY])
            beside = sum(1 for r in working if r[1] < first_query_end)
            line += f"  beside the query kernel {beside}"
        print(line)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        summarize(p)

#!/usr/bin/env python3
"""Summary of per-block traces written by the CUDA bench built with -DHL_BLOCK_TRACE=ON.

Each input line: unit kernel block resident_ns start_ns end_ns sm (kernels/cuda/block_trace.cuh).
Prints, per kernel of the last step traced, its working blocks' first start, last end and median duration in us from
the step's first resident block, and for the scaled chunk-state pass (the backward's reverse
pass) how many of its blocks started before the query kernel's first block ended (beside it).
Where the file name gives the batch (trace_B<b>_..., the bench's 32 heads a batch), the query and
fused key kernels' blocks are also summarised per segment.

  scripts/trace_summary.py TRACE.txt [...]
"""
import re
import statistics
import sys

# In the order of block_trace::Kernel (kernels/cuda/block_trace.cuh).
NAMES = ["state pass", "scaled state pass", "forward", "query", "u combine", "fused key"]
QUERY, SCALED_PASS, FUSED_KEY = 3, 1, 5
HEADS = 32  # the CUDA bench's q heads (kHeads)
IDLE_US = 3.0  # blocks shorter than this had nothing to do (a skipped segment)
GAP_NS = 100_000  # kernels of one step follow each other closer than this


def segments_of(kernel, records, units):
    """(segment of each record, segments) from the launch's block order, or None."""
    n = len(records)
    if n % units:
        return None
    by_block = sorted(records, key=lambda r: r[3])
    if kernel == QUERY:
        s = n // units
        return {r[3]: r[3] % s for r in by_block}, s
    # The fused key kernel: unit-major, or, as the backward's dataflow launches it, the last
    # segment's blocks first and one short block a unit (dc_w, dc_l) after the key blocks.
    durations = [r[2] - r[1] for r in by_block]
    tail = durations[n - units:]
    if n > units and max(tail) < 0.25 * statistics.median(durations[: n - units]):
        s = n // units - 1
        seg_of = {r[3]: s - 1 - r[3] // units for r in by_block[: n - units]}
        seg_of.update({r[3]: s for r in by_block[n - units :]})  # shown as "dc_w, dc_l"
        return seg_of, s
    s = n // units
    return {r[3]: r[3] % s for r in by_block}, s


def print_segments(kernel, records, units, us):
    found = segments_of(kernel, records, units)
    if found is None:
        return
    seg_of, count = found
    for seg in range(count + 1):
        mine = [r for r in records if seg_of.get(r[3]) == seg]
        if not mine:
            continue
        durations = [(r[2] - r[1]) / 1e3 for r in mine]
        name = f"segment {seg}" if seg < count else "dc_w, dc_l"
        print(f"    {name}: blocks {len(mine):4d}  start {us(min(r[1] for r in mine)):7.1f}-"
              f"{us(max(r[1] for r in mine)):7.1f}  end {us(min(r[2] for r in mine)):7.1f}-"
              f"{us(max(r[2] for r in mine)):7.1f}  block us median {statistics.median(durations):6.1f}"
              f" max {max(durations):6.1f}")


def summarize(path):
    blocks = {}
    for line in open(path):
        _, kernel, block, resident, start, end, _ = line.split()
        blocks.setdefault(int(kernel), []).append((int(resident), int(start), int(end), int(block)))
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
        batch = re.search(r"trace_B(\d+)_", path)
        if batch and kernel in (QUERY, FUSED_KEY):
            print_segments(kernel, blocks[kernel], int(batch.group(1)) * HEADS, us)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        summarize(p)

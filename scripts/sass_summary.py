#!/usr/bin/env python3
"""Reads the SASS table of one ncu report (`ncu --page source --csv --print-source sass`, as
scripts/gpu-ncu.sh writes it) and prints where a kernel's time goes:

- the lines with the most warp-stall samples, each with the mbarrier its wait loop polls;
- the samples of every mbarrier's wait loops, by the barrier's shared-memory offset, named when
  --bars gives the kernel's barrier layout (OFFSET:NAME,NAME,... for consecutive 8-byte
  barriers from OFFSET, e.g. 0x32c00:full0,full1,empty0,empty1,u_full; a wait whose slot is in
  a register shows its array's first barrier);
- the kernel cut into regions (runs of executed code: a warpgroup role's loop, the out-of-line
  wait loops), each with its share of samples, its main stall reasons and its instruction mix
  (executed warp instructions by opcode), optionally per unit of work (--per N divides the counts
  by N, e.g. tiles times warps).

    scripts/sass_summary.py KERNEL-sass.csv [--top 40] [--per N] [--bars OFFSET:NAME,...]
"""
import argparse
import collections
import csv
import re


def read_table(path):
    rows = list(csv.reader(open(path)))
    head = next((i for i, r in enumerate(rows) if "Source" in r and "Address" in r), None)
    if head is None:
        return None, None
    header = rows[head]
    # The table repeats per profiled launch, each behind a "Kernel Name" row: read the first.
    end = next((i for i in range(head + 1, len(rows)) if rows[i][:1] == ["Kernel Name"]), len(rows))
    return header, [r for r in rows[head + 1:end] if len(r) == len(header)]


def number(text):
    return float(text.replace(",", "") or 0)


def opcode(source):
    words = source.split()
    if not words:
        return ""
    word = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    return word.split(".")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=40, help="lines with the most samples")
    parser.add_argument("--per", type=float, default=0, help="divide instruction counts by this")
    parser.add_argument("--bars", default="", help="OFFSET:NAME,NAME,... of 8-byte mbarriers")
    args = parser.parse_args()
    names = {}
    if args.bars:
        base, _, listed = args.bars.partition(":")
        names = {int(base, 16) + 8 * i: n for i, n in enumerate(listed.split(",")) if n}
    header, body = read_table(args.csv)
    if header is None:
        print("no source table")
        return
    source, address = header.index("Source"), header.index("Address")
    samples = next((i for i, c in enumerate(header) if c.startswith("Warp Stall Sampling (All")), None)
    executed = header.index("Instructions Executed") if "Instructions Executed" in header else None
    if samples is None:
        print("columns:", header)
        return
    reasons = [i for i, c in enumerate(header) if c.startswith("stall_") and "Not Issued" not in c]
    total = sum(number(r[samples]) for r in body) or 1.0

    print(f"{len(body)} SASS lines, {total:.0f} stall samples; top lines, each with the mbarrier")
    print("wait at its branch target or the instruction before it (a wait loop's branch names it):")
    by_address = {r[address]: r for r in body}

    def polled(index):
        """The wait line's note (its branch target or the line before it) and the offset of the
        mbarrier it polls, or None."""
        row = body[index]
        target = re.search(r"BRA (0x[0-9a-f]+)", row[source])
        note = by_address.get(target.group(1), [""] * len(header))[source] if target else ""
        if "TRYWAIT" in row[source]:
            note = row[source]
        elif "TRYWAIT" not in note:
            note = body[index - 1][source] if index > 0 else ""
        offset = re.search(r"TRYWAIT.*\+0x([0-9a-f]+)\]", note)
        return note, int(offset.group(1), 16) if offset else None

    def barrier(offset):
        return f"{offset:#x}" + (f" ({names[offset]})" if offset in names else "")

    for index in sorted(range(len(body)), key=lambda i: -number(body[i][samples]))[:args.top]:
        row = body[index]
        note, offset = polled(index)
        share = 100 * number(row[samples]) / total
        print(f"{share:5.1f}%  {row[address]}  {row[source][:70]:70s} | "
              f"{note.strip()[:60]} {names.get(offset, '')}".rstrip())

    waits = collections.Counter()
    for index, row in enumerate(body):
        offset = polled(index)[1]
        if offset is not None:
            waits[offset] += number(row[samples])
    print("\nsamples in each mbarrier's wait loops (offset in shared memory):")
    for offset, count in waits.most_common():
        if count >= 0.001 * total:
            print(f"{100 * count / total:5.1f}%  {barrier(offset)}")

    if executed is None:
        return
    # Regions: runs of executed lines, split where more than 8 lines in a row never ran.
    regions, start, last = [], None, None
    for index, row in enumerate(body):
        if number(row[executed]) > 0:
            if start is None:
                start = index
            elif index - last > 8:
                regions.append((start, last))
                start = index
            last = index
    if start is not None:
        regions.append((start, last))
    print("\nregions with at least 1% of the samples (lines, first address): samples, main stall")
    print(f"reasons, executed warp instructions{' per unit' if args.per else ''} and the top opcodes:")
    scale = 1.0 / args.per if args.per else 1.0
    for first, end in regions:
        lines = body[first:end + 1]
        share = sum(number(r[samples]) for r in lines)
        if share < 0.01 * total:
            continue
        stalls = collections.Counter()
        mix = collections.Counter()
        for r in lines:
            for i in reasons:
                stalls[header[i][len("stall_"):]] += number(r[i])
            mix[opcode(r[source])] += number(r[executed])
        count = sum(mix.values()) * scale
        top_stalls = ", ".join(f"{k} {100 * v / share:.0f}%" for k, v in stalls.most_common(4))
        top_ops = " ".join(f"{k}:{v * scale:.0f}" for k, v in mix.most_common(12))
        print(f"lines {first}-{end} ({body[first][address]}): {100 * share / total:.1f}% of samples "
              f"({top_stalls}); {count:.0f} instructions: {top_ops}")


if __name__ == "__main__":
    main()

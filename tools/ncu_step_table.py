#!/usr/bin/env python3
"""Per-kernel table of one graphed decode step, from an Nsight Compute raw CSV.

Input: `ncu --import REPORT --csv --page raw --print-units base` of a run of
`encore bench --modes graph-inline` profiled with `--graph-profiling node` and the metrics
gpu__time_duration.sum, dram__bytes_read.sum, dram__bytes_write.sum over a window of launches
that holds at least two whole steps (scripts/pack-gpu.sh, phase `profile`). A step ends
with the sampling kernel (`sample_f32`): the step taken is the kernels after the
second-to-last sample launch up to and including the last one.

Output: a markdown table, one row per kernel name in step order (launches, total and mean us,
DRAM GB/s read + write, % of the copy bandwidth given), and the step's totals; with --json,
the same numbers as JSON.

Usage: ncu_step_table.py RAW.csv [--copy-gbps 4274] [--label TEXT] [--json OUT.json]
"""
import argparse
import csv
import json
import sys


def read_rows(path):
    with open(path, newline="") as f:
        lines = [l for l in f if not l.startswith("==")]
    rows = list(csv.reader(lines))
    if not rows:
        sys.exit(f"{path}: empty ncu CSV")
    header = rows[0]
    need = ["Kernel Name", "gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum"]
    missing = [n for n in need if n not in header]
    if missing:
        sys.exit(f"{path}: ncu CSV lacks the columns {missing} (profile with --metrics {','.join(need[1:])})")
    ix = [header.index(n) for n in need]
    out = []
    for r in rows[1:]:
        if len(r) != len(header):
            continue
        try:
            t, rd, wr = (float(r[i].replace(",", "")) for i in ix[1:])
        except ValueError:
            continue  # the units row
        out.append((r[ix[0]], t, rd + wr))
    return out


def short(name):
    # "gemv_bf16_m1(...)" / "void foo<...>(...)": the entry name without its argument list
    name = name.split("(")[0]
    return name.replace("void ", "").strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--copy-gbps", type=float, default=0.0)
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = read_rows(a.csv)
    ends = [i for i, (n, _, _) in enumerate(rows) if short(n).startswith("sample")]
    if len(ends) < 2:
        sys.exit(f"{a.csv}: fewer than two sample launches in {len(rows)} kernels: the window holds no whole step")
    step = rows[ends[-2] + 1 : ends[-1] + 1]
    order, agg = [], {}
    for n, t, b in step:
        k = short(n)
        if k not in agg:
            order.append(k)
            agg[k] = [0, 0.0, 0.0]
        agg[k][0] += 1
        agg[k][1] += t
        agg[k][2] += b
    total_ns = sum(t for _, t, _ in step)
    total_b = sum(b for _, _, b in step)
    print(f"### {a.label}" if a.label else "### decode step")
    print(f"{len(step)} kernels, {total_ns / 1e3:.1f} us of kernel time, {total_b / 1e6:.1f} MB DRAM, "
          f"{total_b / total_ns:.0f} GB/s overall" + (f" ({100 * total_b / total_ns / a.copy_gbps:.0f}% of copy)" if a.copy_gbps else ""))
    print()
    print("| kernel | launches | total us | mean us | GB/s | % copy | % of step |")
    print("|---|---|---|---|---|---|---|")
    res = []
    for k in sorted(order, key=lambda k: -agg[k][1]):
        c, t, b = agg[k]
        gbs = b / t if t else 0.0
        pct = f"{100 * gbs / a.copy_gbps:.0f}" if a.copy_gbps else "-"
        print(f"| {k} | {c} | {t / 1e3:.1f} | {t / c / 1e3:.2f} | {gbs:.0f} | {pct} | {100 * t / total_ns:.1f} |")
        res.append({"kernel": k, "launches": c, "total_us": t / 1e3, "gbps": gbs})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"label": a.label, "kernels": len(step), "kernel_us": total_ns / 1e3,
                       "dram_bytes": total_b, "rows": res}, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Did a change make anything slower? Compares benchmark JSONs of a baseline tree and a new tree, run
on the same GPU in the same session (bench_attention.py, bench_moe.py, bench_decode_attention.py: any
JSON whose "results" (or "decode") rows have a "case" (or shape keys) and "ms"/"minillm" timings).

Two baseline runs give the noise: per case, noise = |base1 / base2 - 1|. The new tree's time (the mean
of its runs) is compared with the baselines' mean; a case is a regression when
new / base - 1 > tolerance + noise (tolerance 2% by default). A peer implementation measured in the
same runs (torch SDPA, cuBLAS, ...) is reported the same way as a control: it did not change, so its
ratios show what the machine itself drifted.

  python3 bench/compare_runs.py --base base1.json base2.json --new new1.json [new2.json] [--impl minillm]
      [--tolerance 0.02] [--out compare.json]
Prints a table (worst first) and a summary; exits 1 when a case regressed.
"""
import argparse
import json
import statistics
import sys

SHAPE_KEYS = ("batch", "context", "heads", "kv_heads", "head_dim", "prefix", "chunk")


def rows(path):
    """{case key: {impl: ms}} of one result file."""
    doc = json.load(open(path))
    out = {}
    for r in doc.get("results", []) + doc.get("decode", []) + doc.get("prefill", []):
        case = r.get("case") or {k: r[k] for k in SHAPE_KEYS if k in r}
        if not case:
            continue
        times = r["ms"] if isinstance(r.get("ms"), dict) else {k: r[k] for k in r
                                                               if isinstance(r[k], (int, float)) and k in (
                                                                   "minillm", "copy_floor", "sdpa_flash",
                                                                   "sdpa_cudnn", "contiguous", "sdpa")}
        out[json.dumps(case, sort_keys=True)] = times
    return out


def compare(base, new, impl, tol):
    common = set.intersection(*(set(r) for r in base + new))
    table = []
    for key in sorted(common):
        b = [r[key].get(impl) for r in base]
        n = [r[key].get(impl) for r in new]
        if None in b or None in n or min(b + n) <= 0:
            continue
        bm, nm = statistics.mean(b), statistics.mean(n)
        noise = abs(b[0] / b[1] - 1) if len(b) > 1 else 0.0
        change = nm / bm - 1
        table.append(dict(case=json.loads(key), base_ms=bm, new_ms=nm, change=change, noise=noise,
                          regression=change > tol + noise))
    table.sort(key=lambda r: -(r["change"] - r["noise"]))
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", nargs="+", required=True, help="baseline result JSONs (two for the noise)")
    ap.add_argument("--new", nargs="+", required=True, help="the new tree's result JSONs")
    ap.add_argument("--impl", default="minillm", help="the implementation compared (default minillm)")
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--out", default=None, help="write the table and summary as JSON")
    args = ap.parse_args()
    base, new = [rows(p) for p in args.base], [rows(p) for p in args.new]
    table = compare(base, new, args.impl, args.tolerance)
    if not table:
        print("no common cases with timings of", args.impl)
        return 1
    print(f"{args.impl}: {len(table)} cases; change = new / base - 1 (means of the runs); noise = |base1 / base2 - 1|")
    print(f"{'change':>8} {'noise':>7} {'base ms':>10} {'new ms':>10}  case")
    for r in table:
        flag = "  REGRESSION" if r["regression"] else ""
        print(f"{100 * r['change']:7.1f}% {100 * r['noise']:6.1f}% {r['base_ms']:10.4f} {r['new_ms']:10.4f}  "
              f"{json.dumps(r['case'], sort_keys=True)}{flag}")
    changes, noises = [r["change"] for r in table], [r["noise"] for r in table]
    summary = dict(impl=args.impl, cases=len(table), median_change=statistics.median(changes),
                   worst_change=max(changes), median_noise=statistics.median(noises), max_noise=max(noises),
                   regressions=sum(r["regression"] for r in table), tolerance=args.tolerance,
                   base=args.base, new=args.new)
    print(f"median change {100 * summary['median_change']:+.1f}%, worst {100 * summary['worst_change']:+.1f}%; "
          f"noise median {100 * summary['median_noise']:.1f}%, max {100 * summary['max_noise']:.1f}%; "
          f"regressions (change > {100 * args.tolerance:.0f}% + noise): {summary['regressions']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(summary=summary, table=table), f, indent=1)
    return 1 if summary["regressions"] else 0


if __name__ == "__main__":
    sys.exit(main())

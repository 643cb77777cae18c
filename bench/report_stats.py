#!/usr/bin/env python3
"""The headline numbers of docs/REPORT.md, computed from the committed result JSON, so that each one
can be reproduced and checked:

    python3 bench/report_stats.py [--results bench/results/h100] [--json stats.json]

No torch, no numpy: the standard library only. What it computes:
  peaks      the measured ceilings (engine.json: short-burst bf16 8192^3 matmul and 1 GiB copy;
             power_limit.json: the 5 s sustained matmul rate) next to the H100 SXM datasheet
             (989 TFLOP/s dense bf16, 3.35 TB/s HBM3)
  attention  minillm vs SDPA cuDNN and SDPA FLASH (FlashAttention-2): median and geometric mean of
             the per-case speedups, over all cases and over N >= 1024 (N = 128 mostly measures launch
             overhead), the ratio of total times (sum of peer ms / sum of minillm ms), how many cases
             are slower than the peer; per sequence length and per (head_dim, causal) group
  ablation   attention_ablation.json / attention_schedule.json: per technique, the kept kernel's
             speedup over the variant without it, per case, and the cases where it reverses
  moe        the MoE grid (moe.json, prefill cases: tokens > 64) against dense cuBLAS of equal FLOPs
             and torch._grouped_mm, the same statistics; the decode cases' weight bandwidth
  engine     the compare cases: speedup over PyTorch eager (and torch.compile when measured), TFLOP/s
             as % of the measured and datasheet peaks, the per-op shares, logits error vs fp32 when
             measured
  spread     for every benchmark with more than one run of the same grid (files <bench>.json and
             <bench>_run<k>.json in the results folder, e.g. attention_run2.json): per case, the
             spread (max - min) / median of minillm's time and of the speedup; else "one run".
             With several runs, the statistics above use each case's median over the runs.
"""
import argparse
import glob
import json
import math
import os
import statistics
import sys

DATASHEET_TFLOPS = 989.0  # H100 SXM5, dense bf16 tensor-core peak (1979 with 2:4 sparsity)
DATASHEET_TBPS = 3.35  # H100 SXM5 80 GB HBM3


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def runs(results, name):
    """Every run of one benchmark grid: <name>.json first, then <name>_run<k>.json in name order."""
    first = os.path.join(results, name + ".json")
    paths = ([first] if os.path.exists(first) else []) + sorted(glob.glob(os.path.join(results, name + "_run*.json")))
    return [(p, load(p)) for p in paths]


def merged(docs):
    """One document from several runs of the same grid: each case's ms and TFLOP/s per implementation
    are the median over the runs that measured it (the first run's document otherwise)."""
    docs = [d for d in docs if d]
    if len(docs) <= 1:
        return docs[0] if docs else None
    by_case = {}
    for d in docs:
        for r in d["results"]:
            by_case.setdefault(case_key(r["case"]), []).append(r)
    out = dict(docs[0], runs=len(docs), results=[])
    for rows in by_case.values():
        r = dict(rows[0])
        for field in ("ms", "tflops"):
            if all(field in x for x in rows):
                r[field] = {k: statistics.median(x[field][k] for x in rows if k in x[field]) for k in rows[0][field]}
        out["results"].append(r)
    return out


def gmean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def ratio_stats(rows, impl, peer):
    """Speedups peer_ms / impl_ms over rows that have both: count, median, geometric mean, min, max,
    the ratio of total times, and how many are below 1 (slower than the peer) and below 0.95."""
    pairs = [(r["ms"][peer], r["ms"][impl]) for r in rows if impl in r.get("ms", {}) and peer in r.get("ms", {})]
    s = [p / m for p, m in pairs]
    if not s:
        return None
    return {"n": len(s), "median": statistics.median(s), "gmean": gmean(s), "min": min(s), "max": max(s),
            "total_time_ratio": sum(p for p, _ in pairs) / sum(m for _, m in pairs),
            "slower": sum(x < 1.0 for x in s), "slower_by_5pct": sum(x < 0.95 for x in s)}


def fmt_ratio(st):
    if not st:
        return "n/a"
    return (f"median {st['median']:.2f}x, geomean {st['gmean']:.2f}x, range {st['min']:.2f}-{st['max']:.2f}x, "
            f"total time {st['total_time_ratio']:.2f}x; slower in {st['slower']} of {st['n']} "
            f"({st['slower_by_5pct']} by more than 5%)")


def case_key(c):
    return tuple(sorted((k, str(v)) for k, v in c.items()))


# ---------------------------------------------------------------------------------------------------

def peaks(engine, power):
    out = {"datasheet_tflops": DATASHEET_TFLOPS, "datasheet_tbps": DATASHEET_TBPS}
    if engine and engine.get("peaks"):
        out["measured_tflops"] = engine["peaks"]["matmul_bf16_8192_tflops"]
        out["measured_copy_gbps"] = engine["peaks"]["copy_1gib_gbps"]
    if power:
        out["sustained_tflops"] = power["phases"]["cublas_8192"]["tflops"]
    return out


def pct(tflops, pk):
    """TFLOP/s as % of the measured burst peak, of the sustained (power-limited) peak and of the datasheet."""
    d = {"datasheet": 100 * tflops / pk["datasheet_tflops"]}
    if "measured_tflops" in pk:
        d["measured"] = 100 * tflops / pk["measured_tflops"]
    if "sustained_tflops" in pk:
        d["sustained"] = 100 * tflops / pk["sustained_tflops"]
    return d


def fmt_pct(d):
    parts = [f"{d['measured']:.0f}% of measured burst" if "measured" in d else None,
             f"{d['sustained']:.0f}% of sustained" if "sustained" in d else None,
             f"{d['datasheet']:.0f}% of datasheet"]
    return ", ".join(p for p in parts if p)


def attention(doc, pk):
    rows = [r for r in doc["results"] if "ms" in r and "minillm" in r["ms"]]
    long_ = [r for r in rows if r["case"]["seqlen"] >= 1024]
    out = {"commit": doc.get("commit"), "date": doc.get("date"), "n": len(rows), "runs": doc.get("runs", 1)}
    for peer, tag in (("torch_sdpa_cudnn", "cudnn"), ("torch_sdpa_flash", "flash")):
        out[tag] = {"all": ratio_stats(rows, "minillm", peer), "n_ge_1024": ratio_stats(long_, "minillm", peer),
                    "by_seqlen": {n: ratio_stats([r for r in rows if r["case"]["seqlen"] == n], "minillm", peer)
                                  for n in sorted({r["case"]["seqlen"] for r in rows})},
                    "by_group": {f"D{d} {'causal' if c else 'full'}": ratio_stats(
                        [r for r in rows if (r["case"]["head_dim"], r["case"]["causal"]) == (d, c)], "minillm", peer)
                        for d, c in sorted({(r["case"]["head_dim"], r["case"]["causal"]) for r in rows})}}
    slow = sorted((r["ms"]["torch_sdpa_cudnn"] / r["ms"]["minillm"], r["case"]) for r in long_
                  if r["ms"]["torch_sdpa_cudnn"] < r["ms"]["minillm"])
    out["cudnn_slower_n_ge_1024"] = [{"speedup": s, "case": c} for s, c in slow]
    head = {}
    for r in rows:
        c = r["case"]
        if (c["batch"], c["heads"], c["seqlen"]) == (16, 16, 2048):
            tf = r["tflops"]["minillm"]
            head[f"D{c['head_dim']} {'causal' if c['causal'] else 'full'}"] = {
                "tflops": tf, "pct": pct(tf, pk), "vs_cudnn": r["ms"]["torch_sdpa_cudnn"] / r["ms"]["minillm"],
                "vs_flash": r["ms"]["torch_sdpa_flash"] / r["ms"]["minillm"]}
    out["headline_b16_h16_n2048"] = head
    best = max(rows, key=lambda r: r["tflops"]["minillm"])
    out["max_tflops"] = {"tflops": best["tflops"]["minillm"], "case": best["case"], "pct": pct(best["tflops"]["minillm"], pk)}
    return out


def ablation(abl, sched):
    """Speedup of the kept kernel over each variant (variant ms / kept ms), per case."""
    out = {}
    if abl:
        names = ["B{} H{} N{} D{}{}".format(*c[:4], " causal" if c[4] else "") for c in abl["cases"]]
        res = abl["results"]
        labels = {"fa2": "TMA + wgmma (vs the FlashAttention-2 kernel)", "serial": "softmax/GEMM overlap",
                  "nopingpong": "ping-pong token", "serial_nopingpong": "overlap + ping-pong",
                  "m128": "192-row tiles at D64 (vs 128)", "nonpersistent": "persistence",
                  "onegroup": "L2 grouping of (batch, head) units", "group48": "L2 groups (default vs 48 pairs)"}
        for v, label in labels.items():
            if v not in res:
                continue
            per = [(res[v][i]["ms"] / res["sm90"][i]["ms"], names[i]) for i in range(len(names))]
            if v == "m128":  # only head dim 64 differs (head dim 128 always uses 128-row tiles)
                per = [p for p in per if " D64" in p[1]]
            sp = [s for s, _ in per]
            out[v] = {"label": label, "median": statistics.median(sp), "min": min(sp), "max": max(sp),
                      "reversed": [{"case": n, "speedup": s} for s, n in per if s < 0.99],
                      "per_case": {n: s for s, n in per}}
        if "exp2_variants" in abl:
            ex = abl["exp2_variants"]["results"]
            for v in ("exp2_quarter", "exp2_third", "exp2_half"):
                per = [(ex["exp2_mufu"][i] / ex[v][i], names[i]) for i in range(len(names))]  # TFLOP/s ratio
                sp = [s for s, _ in per]
                out[v] = {"label": f"all exp2 on the MUFU (vs {v})", "median": statistics.median(sp), "min": min(sp),
                          "max": max(sp), "reversed": [{"case": n, "speedup": s} for s, n in per if s < 0.99],
                          "per_case": {n: s for s, n in per}}
    if sched:
        res = sched["results"]
        per = []
        for a, b in zip(res["sm90"], res["static"]):
            c = a["case"]
            per.append((b["ms"] / a["ms"], "B{} H{} N{} D{}{}".format(*c[:4], " causal" if c[4] else "")))
        sp = [s for s, _ in per]
        out["static"] = {"label": "dynamic schedule (vs static round-robin)", "median": statistics.median(sp),
                         "min": min(sp), "max": max(sp),
                         "reversed": [{"case": n, "speedup": s} for s, n in per if s < 0.99],
                         "per_case": {n: s for s, n in per}}
    return out


def moe(doc, quick, pk):
    out = {}
    if doc:
        rows = [r for r in doc["results"] if "ms" in r and r["case"]["tokens"] > 64 and not r["case"].get("router_skew")]
        out["grid"] = {"commit": doc.get("commit"), "n": len(rows),
                       "skipped": sum("skipped" in r for r in doc["results"]),
                       "vs_cublas_dense": ratio_stats(rows, "minillm", "cublas_dense"),
                       "vs_torch_grouped_mm": ratio_stats(rows, "minillm", "torch_grouped_mm"),
                       "vs_cublas_dense_by_tokens": {t: ratio_stats([r for r in rows if r["case"]["tokens"] == t],
                                                                    "minillm", "cublas_dense")
                                                     for t in sorted({r["case"]["tokens"] for r in rows})}}
    if quick:
        cases = []
        for r in quick["results"]:
            if "ms" not in r:
                continue
            c = r["case"]
            d = {"case": c, "ms": r["ms"]["minillm"], "tflops": r["tflops"]["minillm"],
                 "pct": pct(r["tflops"]["minillm"], pk),
                 "vs_cublas_dense": r["ms"]["cublas_dense"] / r["ms"]["minillm"],
                 "vs_torch_grouped_mm": r["ms"]["torch_grouped_mm"] / r["ms"]["minillm"]}
            if "weights_bw_fraction_of_copy" in r:
                d["weights_gbps"] = r["weights_gbps"]
                d["weights_bw_fraction_of_copy"] = r["weights_bw_fraction_of_copy"]
                d["weights_bw_fraction_of_datasheet"] = r["weights_gbps"] / (1e3 * DATASHEET_TBPS)
            cases.append(d)
        out["quick"] = {"commit": quick.get("commit"), "cases": cases}
    return out


def engine(doc, pk):
    out = []
    for r in doc["results"]:
        if "minillm_ops_ms" not in r:
            continue
        ms = r["ms"]
        total = sum(r["minillm_ops_ms"].values())
        d = {"case": r["case"], "ms": ms["minillm"], "tflops": r["tflops"]["minillm"], "pct": pct(r["tflops"]["minillm"], pk),
             "vs_torch_eager": ms.get("torch_eager", math.nan) / ms["minillm"],
             "op_share": {k: v / total for k, v in r["minillm_ops_ms"].items()}}
        if "torch_compile" in ms:
            d["vs_torch_compile"] = ms["torch_compile"] / ms["minillm"]
            d["torch_compile_mode"] = r.get("torch_compile", {}).get("mode")
        if "torch_compile" in r:
            d["torch_compile"] = r["torch_compile"]
        if "accuracy_vs_fp32" in r:
            d["accuracy_vs_fp32"] = r["accuracy_vs_fp32"]
        out.append(d)
    return out


def spread(results):
    """Run-to-run spread for every grid measured more than once."""
    out = {}
    for name in ("attention", "moe", "moe_quick", "engine"):
        rs = [(p, d) for p, d in runs(results, name) if d]
        if not rs:
            continue
        if len(rs) == 1:
            out[name] = {"runs": 1}
            continue
        by_case = {}
        for _, d in rs:
            for r in d["results"]:
                if "ms" in r and "minillm" in r["ms"]:
                    by_case.setdefault(case_key(r["case"]), []).append(r)
        peer = {"attention": "torch_sdpa_cudnn", "moe": "cublas_dense", "moe_quick": "cublas_dense",
                "engine": "torch_eager"}[name]
        t_spread, s_spread = [], []
        for rows in by_case.values():
            if len(rows) < 2:
                continue
            t = [r["ms"]["minillm"] for r in rows]
            t_spread.append((max(t) - min(t)) / statistics.median(t))
            s = [r["ms"][peer] / r["ms"]["minillm"] for r in rows if peer in r["ms"]]
            if len(s) >= 2:
                s_spread.append((max(s) - min(s)) / statistics.median(s))
        out[name] = {"runs": len(rs), "files": [os.path.basename(p) for p, _ in rs], "cases": len(t_spread),
                     "minillm_ms_spread_median": statistics.median(t_spread) if t_spread else None,
                     "minillm_ms_spread_max": max(t_spread) if t_spread else None,
                     f"speedup_vs_{peer}_spread_median": statistics.median(s_spread) if s_spread else None,
                     f"speedup_vs_{peer}_spread_max": max(s_spread) if s_spread else None}
    return out


# ---------------------------------------------------------------------------------------------------

def report(st):
    p = st["peaks"]
    print("== peaks")
    print(f"  datasheet (H100 SXM5): {p['datasheet_tflops']:.0f} TFLOP/s dense bf16, {p['datasheet_tbps']:.2f} TB/s")
    if "measured_tflops" in p:
        print(f"  measured (engine.json, short burst): bf16 8192^3 {p['measured_tflops']:.0f} TFLOP/s "
              f"({100 * p['measured_tflops'] / p['datasheet_tflops']:.0f}% of datasheet), 1 GiB copy "
              f"{p['measured_copy_gbps']:.0f} GB/s ({p['measured_copy_gbps'] / 10 / p['datasheet_tbps']:.0f}% of datasheet)")
    if "sustained_tflops" in p:
        print(f"  sustained 5 s under the 700 W limit (power_limit.json): {p['sustained_tflops']:.0f} TFLOP/s")
    a = st.get("attention")
    if a:
        print(f"== attention ({a['n']} cases, commit {a['commit']}, {a['date']}; {a['runs']} run(s), per case the median)")
        for tag, name in (("cudnn", "SDPA cuDNN"), ("flash", "SDPA FLASH = FlashAttention-2")):
            print(f"  vs {name}:")
            print(f"    all cases:  {fmt_ratio(a[tag]['all'])}")
            print(f"    N >= 1024:  {fmt_ratio(a[tag]['n_ge_1024'])}")
            for n, s in a[tag]["by_seqlen"].items():
                print(f"    N = {n:5d}: {fmt_ratio(s)}")
            for g, s in a[tag]["by_group"].items():
                print(f"    {g:11s}: {fmt_ratio(s)}")
        slow = a["cudnn_slower_n_ge_1024"]
        print(f"  slower than cuDNN at N >= 1024: {len(slow)} cases; the 8 slowest: " + ("; ".join(
            "B{batch} H{heads} N{seqlen} D{head_dim}{c} {s:.2f}x".format(**x["case"], s=x["speedup"],
                                                                      c=" causal" if x["case"]["causal"] else "")
            for x in slow[:8]) or "none"))
        for g, h in a["headline_b16_h16_n2048"].items():
            print(f"  B16 H16 N2048 {g:9s}: {h['tflops']:.0f} TFLOP/s = {fmt_pct(h['pct'])}; "
                  f"{h['vs_flash']:.2f}x FLASH, {h['vs_cudnn']:.2f}x cuDNN")
        m = a["max_tflops"]
        print(f"  fastest case: {m['tflops']:.0f} TFLOP/s ({fmt_pct(m['pct'])}) at {m['case']}")
    ab = st.get("ablation")
    if ab:
        print("== attention ablations (speedup of the kept kernel over the variant without the technique)")
        for v, d in ab.items():
            rev = ", ".join(f"{x['case']} {x['speedup']:.2f}x" for x in d["reversed"]) or "none"
            print(f"  {d['label']:48s} median {d['median']:.2f}x, range {d['min']:.2f}-{d['max']:.2f}x; reversed: {rev}")
    mo = st.get("moe", {})
    if "grid" in mo:
        g = mo["grid"]
        print(f"== MoE grid ({g['n']} prefill cases measured, {g['skipped']} skipped; commit {g['commit']})")
        print(f"  vs dense cuBLAS (equal FLOPs): {fmt_ratio(g['vs_cublas_dense'])}")
        print(f"  vs torch._grouped_mm:          {fmt_ratio(g['vs_torch_grouped_mm'])}")
        for t, s in g["vs_cublas_dense_by_tokens"].items():
            print(f"    T = {t:6d} vs dense cuBLAS: {fmt_ratio(s)}")
    if "quick" in mo:
        print(f"== MoE quick grid (commit {mo['quick']['commit']})")
        for d in mo["quick"]["cases"]:
            c = d["case"]
            name = f"T{c['tokens']} H{c['hidden']} E{c['experts']} top-{c['top_k']} F{c['ffn']}" + (
                " skewed" if c.get("router_skew") else "")
            line = (f"  {name:38s} {d['ms']:8.3f} ms {d['tflops']:5.0f} TFLOP/s ({fmt_pct(d['pct'])}); "
                    f"{d['vs_cublas_dense']:.2f}x dense, {d['vs_torch_grouped_mm']:.2f}x grouped_mm")
            if "weights_bw_fraction_of_copy" in d:
                line += (f"; weights {d['weights_gbps']:.0f} GB/s = {100 * d['weights_bw_fraction_of_copy']:.0f}% of "
                         f"measured copy, {100 * d['weights_bw_fraction_of_datasheet']:.0f}% of datasheet")
            print(line)
    if st.get("engine"):
        print("== engine compare cases")
        for d in st["engine"]:
            c = d["case"]
            print(f"  {c['model']:6s} B{c['batch']} N{c['seqlen']}: {d['ms']:.1f} ms, {d['tflops']:.0f} TFLOP/s "
                  f"({fmt_pct(d['pct'])}); {d['vs_torch_eager']:.2f}x torch eager"
                  + (f", {d['vs_torch_compile']:.2f}x torch.compile ({d['torch_compile_mode']})" if "vs_torch_compile" in d else ""))
            print("    op shares: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in
                                               sorted(d["op_share"].items(), key=lambda kv: -kv[1])))
            if "torch_compile" in d:
                print(f"    torch.compile: {json.dumps(d['torch_compile'])}")
            for k, v in d.get("accuracy_vs_fp32", {}).items():
                print(f"    logits vs fp32 reference, {k}: rel L2 {v['rel_l2']:.3g}, top-1 agreement {v['top1_agreement']:.3f}")
    print("== run-to-run spread")
    for name, s in st["spread"].items():
        if s["runs"] == 1:
            print(f"  {name}: one run in the results folder; no spread can be computed from the JSON")
        else:
            print(f"  {name}: {s['runs']} runs ({', '.join(s['files'])}), {s['cases']} cases in common: " +
                  ", ".join(f"{k} {100 * v:.1f}%" for k, v in s.items() if k.endswith(("median", "max")) and v is not None))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "h100"))
    ap.add_argument("--json", default=None, help="also write the statistics here")
    args = ap.parse_args()
    R = args.results
    eng, power = load(os.path.join(R, "engine.json")), load(os.path.join(R, "power_limit.json"))
    pk = peaks(eng, power)
    st = {"peaks": pk}
    att = merged([d for _, d in runs(R, "attention")])
    if att:
        st["attention"] = attention(att, pk)
    st["ablation"] = ablation(load(os.path.join(R, "attention_ablation.json")),
                              load(os.path.join(R, "attention_schedule.json")))
    st["moe"] = moe(merged([d for _, d in runs(R, "moe")]), merged([d for _, d in runs(R, "moe_quick")]), pk)
    if eng:
        st["engine"] = engine(eng, pk)
    st["spread"] = spread(R)
    report(st)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(st, f, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())

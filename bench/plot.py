"""Figures for docs/REPORT.md from the benchmark JSON files (bench/results/<gpu>/*.json).

    python3 bench/plot.py [--results bench/results/h100] [--out docs/figures]

attention.png  TFLOP/s vs sequence length per implementation (median over the batch x heads grid),
               one panel per head_dim x causal; with several runs of the grid (attention.json,
               attention_run2.json, ...), the median of the runs with a bar from the lowest to the
               highest run
attention_ratio.png  every case's speedup over SDPA cuDNN and SDPA FLASH (FlashAttention-2) against
               sequence length, y axis from zero, 1.0 marked; bars over the runs when there are several
moe.png        MoE layer TFLOP/s per implementation vs tokens (top row) and vs experts (bottom row),
               one column per hidden size (uniform routing)
engine.png     per-op share of each compare case (with minillm's and eager's ms), and the sweeps'
               TFLOP/s vs tokens per forward against the sustained cuBLAS rate
roofline.png   the main kernels placed on the roofline of the measured matmul and copy peaks, with
               the sustained matmul rate under the power limit
serving.png    decode attention GB/s vs context per batch and head layout (copy bandwidth dashed);
               generation output tok/s vs requests in flight (bars over the runs) with the batch-1
               roofline; the server's TTFT and inter-token latency p50 / p99 per request rate
docs/TABLES.md every measured case of the three benchmarks, as markdown tables
"""
import argparse
import collections
import glob
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"minillm": "tab:red", "torch_sdpa_flash": "tab:blue", "torch_sdpa_cudnn": "tab:green",
          "cublas_dense": "tab:gray", "torch_grouped_mm": "tab:purple", "torch_eager": "tab:blue"}


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ok(rows):
    return [r for r in rows if "ms" in r and "skipped" not in r]


def median_lines(ax, per_run, xkey, where=lambda c: True):
    """One line per implementation: the median TFLOP/s over the rows of each run whose case passes
    `where`, at each value of case[xkey]; with several runs, the median of the runs and a bar from the
    lowest to the highest."""
    for impl in sorted({k for r in per_run[0] for k in r["tflops"]}):
        series = []  # per run: {x: median TFLOP/s}
        for rows in per_run:
            by_x = collections.defaultdict(list)
            for r in rows:
                if where(r["case"]) and impl in r["tflops"]:
                    by_x[r["case"][xkey]].append(r["tflops"][impl])
            series.append({x: statistics.median(v) for x, v in by_x.items()})
        xs = sorted(series[0])
        mid = [statistics.median(s_[x] for s_ in series if x in s_) for x in xs]
        if len(series) > 1:
            lo = [m - min(s_[x] for s_ in series if x in s_) for m, x in zip(mid, xs)]
            hi = [max(s_[x] for s_ in series if x in s_) - m for m, x in zip(mid, xs)]
            ax.errorbar(xs, mid, yerr=[lo, hi], fmt="o-", capsize=3, label=impl, color=COLORS.get(impl))
        else:
            ax.plot(xs, mid, "o-", label=impl, color=COLORS.get(impl))
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def load_runs(results, name):
    """Every run of one grid: <name>.json, then <name>_run<k>.json (same cases, measured again)."""
    paths = [os.path.join(results, name + ".json")] + sorted(glob.glob(os.path.join(results, name + "_run*.json")))
    return [d for d in (load(p) for p in paths) if d]


def case_id(c):
    return tuple(sorted((k, str(v)) for k, v in c.items()))


def plot_attention(runs, out):
    """TFLOP/s per implementation against sequence length: the median over batch x heads of each run;
    with several runs, the median of the runs and a bar over their range."""
    doc = runs[0]
    per_run = [ok(d["results"]) for d in runs]
    panels = sorted({(r["case"]["head_dim"], r["case"]["causal"]) for r in per_run[0]})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (d, causal) in zip(axes[0], panels):
        median_lines(ax, per_run, "seqlen", lambda c, d=d, causal=causal: (c["head_dim"], c["causal"]) == (d, causal))
        ax.set_title(f"head_dim {d}, {'causal' if causal else 'full'}")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOP/s (median over batch x heads)")
    axes[0][0].legend(fontsize=8)
    runs_note = f"{len(runs)} runs: median, bars from lowest to highest" if len(runs) > 1 else "one run"
    fig.suptitle(f"Attention forward, bf16 — {doc.get('device', '')} ({runs_note})")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "attention.png"), dpi=110)
    plt.close(fig)


def plot_attention_ratio(runs, out):
    """Every case's speedup (peer ms / minillm ms) against sequence length: one row per peer, one column
    per (head_dim, causal); y axes start at zero and 1.0 (parity) is drawn; the line is the median
    over the cases of each sequence length."""
    per_case = collections.defaultdict(list)  # case id -> its rows over the runs
    for d in runs:
        for r in ok(d["results"]):
            per_case[case_id(r["case"])].append(r)
    panels = sorted({(rows[0]["case"]["head_dim"], rows[0]["case"]["causal"]) for rows in per_case.values()})
    peers = (("torch_sdpa_cudnn", "SDPA cuDNN", "tab:green"), ("torch_sdpa_flash", "SDPA FLASH (FlashAttention-2)", "tab:blue"))
    fig, axes = plt.subplots(len(peers), len(panels), figsize=(3.6 * len(panels), 5.6), squeeze=False, sharex=True)
    for row, (peer, label, color) in enumerate(peers):
        top = 0.0
        for col, (d, causal) in enumerate(panels):
            ax = axes[row][col]
            xs, mid, lo, hi, meds = [], [], [], [], collections.defaultdict(list)
            for rows in per_case.values():
                c = rows[0]["case"]
                s_ = [r["ms"][peer] / r["ms"]["minillm"] for r in rows if peer in r["ms"]]
                if (c["head_dim"], c["causal"]) != (d, causal) or not s_:
                    continue
                m = statistics.median(s_)
                xs.append(c["seqlen"])
                mid.append(m)
                lo.append(m - min(s_))
                hi.append(max(s_) - m)
                meds[c["seqlen"]].append(m)
                top = max(top, max(s_))
            if len(runs) > 1:
                ax.errorbar(xs, mid, yerr=[lo, hi], fmt=".", ms=3, alpha=0.5, color=color, elinewidth=0.8)
            else:
                ax.plot(xs, mid, ".", ms=3, alpha=0.5, color=color)
            mx = sorted(meds)
            ax.plot(mx, [statistics.median(meds[x]) for x in mx], "-", color=color, lw=1.5, label="median over cases")
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xticks(mx, [str(x) for x in mx], fontsize=7)
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"head_dim {d}, {'causal' if causal else 'full'}", fontsize=10)
            if row == len(peers) - 1:
                ax.set_xlabel("sequence length")
        for ax in axes[row]:
            ax.set_ylim(0, top * 1.05)
        axes[row][0].set_ylabel(f"speedup vs {label}", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower left")
    runs_note = f"{len(runs)} runs: median, bars over the runs" if len(runs) > 1 else "one run"
    fig.suptitle(f"Attention: each case's speedup (peer ms / minillm ms), bf16 — {runs[0].get('device', '')} ({runs_note})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "attention_ratio.png"), dpi=110)
    plt.close(fig)


def plot_moe(runs, out):
    """TFLOP/s against tokens (top) and experts (bottom) per hidden size; with several runs of the grid
    (moe.json, moe_run2.json, ...), the median of the runs and a bar over their range."""
    def rows_of(d):
        return [r for r in ok(d["results"]) if r["case"].get("tokens", 0) > 64 and not r["case"].get("router_skew")]
    per_run = [rows_of(d) for d in runs]
    rows = per_run[0]
    hiddens = sorted({r["case"]["hidden"] for r in rows})
    if not hiddens:
        return
    fig, axes = plt.subplots(2, len(hiddens), figsize=(4.2 * len(hiddens), 7.0), squeeze=False)
    for ax, h in zip(axes[0], hiddens):
        median_lines(ax, per_run, "tokens", lambda c, h=h: c["hidden"] == h)
        ax.set_title(f"hidden {h} (median over experts x top-k)", fontsize=10)
        ax.set_xlabel("tokens")
        ax.set_ylabel("TFLOP/s")
    # Second row: against the number of experts, at the token count with the most expert counts measured
    # for each hidden (the largest such).
    for ax, h in zip(axes[1], hiddens):
        sub = [r for r in rows if r["case"]["hidden"] == h]
        t = max({r["case"]["tokens"] for r in sub},
                key=lambda n: (len({r["case"]["experts"] for r in sub if r["case"]["tokens"] == n}), n))
        median_lines(ax, per_run, "experts", lambda c, h=h, t=t: c["hidden"] == h and c["tokens"] == t)
        ax.set_title(f"hidden {h}, {t} tokens (median over top-k)", fontsize=10)
        ax.set_xlabel("experts")
        ax.set_ylabel("TFLOP/s")
    axes[0][0].legend(fontsize=8)
    runs_note = f"{len(runs)} runs: median, bars from lowest to highest" if len(runs) > 1 else "one run"
    fig.suptitle(f"MoE layer, bf16 SwiGLU — {runs[0].get('device', '')} ({runs_note})")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "moe.png"), dpi=110)
    plt.close(fig)


def plot_engine(doc, out, power=None):
    """Left: each compare case's per-op share of the forward, labelled with minillm's and eager's ms.
    Right: the sweeps' TFLOP/s against tokens per forward, one line per model and batch."""
    rows = [r for r in ok(doc["results"]) if "minillm_ops_ms" in r]
    sweep = [r for r in ok(doc["results"]) if "minillm_ops_ms" not in r]
    if not rows:
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1, 1.4]})
    ops = sorted({k for r in rows for k in r["minillm_ops_ms"]})
    cmap = plt.get_cmap("tab10")
    labels = [f"{r['case']['model']}\nB{r['case']['batch']} N{r['case']['seqlen']}" for r in rows]
    bottom = [0.0] * len(rows)
    for i, op in enumerate(ops):
        vals = [100 * r["minillm_ops_ms"].get(op, 0.0) / sum(r["minillm_ops_ms"].values()) for r in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, label=op, color=cmap(i % 10), width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(rows):
        eager, comp = r["ms"].get("torch_eager"), r["ms"].get("torch_compile")
        text = (f"{r['ms']['minillm']:.1f} ms" + (f"\neager {eager:.1f}" if eager else "")
                + (f"\ncompile {comp:.1f}" if comp else ""))
        ax.text(i, 101, text, ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 125)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("% of the forward (per-op profiling pass)")
    ax.set_title("minillm forward by op, bf16", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for mi, model in enumerate(dict.fromkeys(r["case"]["model"] for r in sweep)):
        batches = sorted({r["case"]["batch"] for r in sweep if r["case"]["model"] == model})
        for bi, B in enumerate(batches):
            pts = sorted((r["case"]["batch"] * r["case"]["seqlen"], r["tflops"]["minillm"]) for r in sweep
                         if r["case"]["model"] == model and r["case"]["batch"] == B)
            bx.plot(*zip(*pts), ["o-", "s-", "^-", "D-"][bi % 4], color=cmap(mi), markersize=4,
                    label=f"{model} B{B}", alpha=0.5 + 0.5 * bi / max(1, len(batches) - 1))
    if power:
        sustained = power["phases"]["cublas_8192"]["tflops"]
        bx.axhline(sustained, color="k", ls="--", lw=1, label=f"cuBLAS 8192^3, 5 s sustained: {sustained:.0f}")
    bx.set_xscale("log", base=2)
    bx.set_ylim(bottom=0)
    seqs = sorted({r["case"]["seqlen"] for r in sweep}) or [0]
    bx.set_xlabel(f"tokens per forward (batch x seq, seq {seqs[0]} .. {seqs[-1]})")
    bx.set_ylabel("TFLOP/s")
    bx.set_title("engine sweeps (one engine per model, CUDA graphs)", fontsize=10)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=6, ncol=3, loc="lower right")
    fig.suptitle(f"Engine — {doc.get('device', '')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "engine.png"), dpi=110)
    plt.close(fig)


def plot_roofline(att, moe, eng, power, out, peak_tflops=761.0, copy_gbps=2929.0):
    # The measured peaks of the engine benchmark's run (short bursts), and the sustained matmul rate
    # under the power limit (bench/power_limit.py) when there is one.
    if eng and eng.get("peaks"):
        peak_tflops = eng["peaks"].get("matmul_bf16_8192_tflops", peak_tflops)
        copy_gbps = eng["peaks"].get("copy_1gib_gbps", copy_gbps)
    elif moe and moe.get("copy_gbps"):
        copy_gbps = moe["copy_gbps"]
    sustained = None
    if power:
        sustained = power.get("phases", {}).get("cublas_8192", {}).get("tflops")
    pts = []
    if att:
        for r in ok(att["results"]):
            c = r["case"]
            if (c["batch"], c["heads"], c["seqlen"]) == (16, 16, 2048) and "minillm" in r["tflops"]:
                flops = 4 * c["batch"] * c["heads"] * c["seqlen"] ** 2 * c["head_dim"] * (0.5 if c["causal"] else 1)
                byts = 4 * c["batch"] * c["seqlen"] * c["heads"] * c["head_dim"] * 2
                pts.append((f"attention D{c['head_dim']}{' causal' if c['causal'] else ''}", flops / byts,
                            r["tflops"]["minillm"]))
    if moe:
        for r in ok(moe["results"]):
            c = r["case"]
            key = (c["tokens"], c["hidden"], c["experts"], c["top_k"])
            if (key in {(32768, 4096, 32, 2), (32768, 2048, 64, 8), (64, 4096, 8, 2)} and "minillm" in r["tflops"]
                    and not c.get("router_skew")):
                flops = c["tokens"] * c["top_k"] * 6 * c["hidden"] * c["ffn"]
                experts_read = min(c["experts"], c["tokens"] * c["top_k"])
                byts = experts_read * 3 * c["hidden"] * c["ffn"] * 2 + 2 * c["tokens"] * c["hidden"] * 2
                pts.append((f"MoE T{c['tokens']} H{c['hidden']} E{c['experts']} k{c['top_k']} F{c['ffn']}", flops / byts,
                            r["tflops"]["minillm"]))
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [10 ** (i / 20) for i in range(-20, 101)]
    ax.plot(xs, [min(peak_tflops, x * copy_gbps / 1e3) for x in xs], "k-", lw=1,
            label=f"roof: {peak_tflops:.0f} TFLOP/s, {copy_gbps:.0f} GB/s")
    if sustained:
        ax.axhline(sustained, color="k", ls="--", lw=0.8, label=f"cuBLAS 8192^3 sustained 5 s: {sustained:.0f} TFLOP/s")
    markers = "os^vD<>p"
    for i, (name, ai, tf) in enumerate(pts):
        ax.plot(ai, tf, markers[i % len(markers)], label=f"{name}: {tf:.0f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of compulsory DRAM traffic)")
    ax.set_ylabel("TFLOP/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Roofline (measured peaks)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "roofline.png"), dpi=110)
    plt.close(fig)


def plot_serving(dec_runs, gen_runs, serve_runs, out):
    """Decode attention bandwidth, generation throughput, serving latency (bench_decode_attention,
    bench_generate, bench_serve)."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    if dec_runs:
        d = dec_runs[0]
        styles = {}
        for r in d["decode"]:
            styles.setdefault((r["heads"], r["kv_heads"]), ["-", "--", ":"][len(styles) % 3])
        batches = sorted({r["batch"] for r in d["decode"]})
        shown = [b for b in (1, 16, 64, 256) if b in batches] if len(batches) > 4 else batches  # a readable few
        colors = dict(zip(shown, ["tab:red", "tab:blue", "tab:green", "tab:purple"]))
        for (h, kv), ls in styles.items():
            for b, col in colors.items():
                rows = sorted((r for r in d["decode"] if r["batch"] == b and (r["heads"], r["kv_heads"]) == (h, kv)),
                              key=lambda r: r["context"])
                if rows:
                    ax.plot([r["context"] for r in rows], [r["kv_bytes"] / r["minillm"] / 1e3 for r in rows], ls,
                            marker="o", ms=3, color=col, label=f"B{b} H{h}/{kv}")
        ax.axhline(d["copy_bandwidth_gbs"], color="k", ls="--", lw=1, label="copy bandwidth")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("KV bytes read / time (GB/s)")
        ax.set_title("Paged decode attention, D128" + (f" (batches {', '.join(map(str, shown))} of the grid)"
                                                        if len(shown) < len(batches) else ""))
        ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    if gen_runs:
        for model, col in (("olmoe", "tab:red"), ("medium", "tab:blue")):
            pts = collections.defaultdict(list)
            for doc in gen_runs:
                for r in doc["results"]:
                    c = r.get("case", {})
                    if c.get("model") == model and c.get("kind") == "concurrency" and "minillm" in r.get("tok_s", {}):
                        pts[c["batch"]].append(r["tok_s"]["minillm"])
            if not pts:
                continue
            xs = sorted(pts)
            ys = [statistics.mean(pts[x]) for x in xs]
            err = [[y - min(pts[x]) for x, y in zip(xs, ys)], [max(pts[x]) - y for x, y in zip(xs, ys)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", color=col, capsize=3, label=f"{model}: 1024 in / 256 out")
            roof = [r["tok_s"]["roofline"] for r in gen_runs[0]["results"]
                    if r.get("case", {}) == {"model": model, "kind": "decode", "batch": 1, "context": 128}
                    and "roofline" in r.get("tok_s", {})]
            if roof:
                ax.plot([1], roof[:1], "*", ms=10, color=col, label=f"{model}: batch-1 roofline (context 128)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("requests in flight")
        ax.set_ylabel("output tokens / s")
        ax.set_title("Generation (minillm.LLM)")
        ax.legend(fontsize=7)
    ax = axes[2]
    if serve_runs:
        s = serve_runs[0]
        labels = ["TTFT p50", "TTFT p99", "ITL p50", "ITL p99"]
        keys = ["ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99"]
        width = 0.8 / max(1, len(s["online"]))
        for i, r in enumerate(s["online"]):
            ax.bar([j + i * width for j in range(len(keys))], [r[k] for k in keys], width,
                   label=f"rate {r['rate']} req/s: {r['output_throughput']:.0f} tok/s")
        ax.set_xticks([j + width * (len(s["online"]) - 1) / 2 for j in range(len(keys))], labels)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"Server, {s['num_prompts']} streaming requests ({s['model']})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "serving.png"), dpi=110)
    plt.close(fig)


def write_tables(docs, path):
    """Every case of every benchmark file: ms and TFLOP/s per implementation."""
    lines = ["# Benchmark tables", "",
             "Generated by `python3 bench/plot.py` from `bench/results/<gpu>/*.json`; each section names its"
             " device, commit and date. ms per call (median), TFLOP/s in parentheses.", ""]
    for name, doc in docs:
        if not doc:
            continue
        rows = doc["results"]
        impls = sorted({k for r in rows for k in r.get("ms", {})}, key=lambda k: (k != "minillm", k))
        keys = list(dict.fromkeys(k for r in rows for k in r["case"]))
        lines += [f"## {name}", "", f"{doc.get('device', '')}, commit {doc.get('commit', '?')}, {doc.get('date', '')}", ""]
        lines.append("| " + " | ".join(keys + impls) + " |")
        lines.append("|" + "---|" * (len(keys) + len(impls)))
        for r in rows:
            cells = [str(r["case"].get(k, "")) for k in keys]
            for i in impls:
                ms = r.get("ms", {}).get(i)
                tf = r.get("tflops", {}).get(i)
                cells.append("" if ms is None else f"{ms:.3f}" + ("" if tf is None else f" ({tf:.0f})"))
            if "skipped" in r:
                cells[-1] = "skipped: " + str(r["skipped"])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default="bench/results/h100")
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    att_runs = load_runs(args.results, "attention")
    att = att_runs[0] if att_runs else None
    moe_runs = load_runs(args.results, "moe")
    moe = moe_runs[0] if moe_runs else None
    eng = load(os.path.join(args.results, "engine.json"))
    if att:
        plot_attention(att_runs, args.out)
        plot_attention_ratio(att_runs, args.out)
    if moe:
        plot_moe(moe_runs, args.out)
    power = load(os.path.join(args.results, "power_limit.json"))
    if eng:
        plot_engine(eng, args.out, power)
    plot_roofline(att, moe, eng, power, args.out)
    dec_runs = load_runs(args.results, "decode_attention") or load_runs(args.results, "decode_attention_quick")
    gen_runs, serve_runs = load_runs(args.results, "generate"), load_runs(args.results, "serve")
    if dec_runs or gen_runs or serve_runs:
        plot_serving(dec_runs, gen_runs, serve_runs, args.out)
    write_tables([("Attention", att), ("MoE", moe), ("Engine", eng)],
                 os.path.join(os.path.dirname(os.path.abspath(args.out)), "TABLES.md"))
    print("figures in", args.out, sorted(os.listdir(args.out)))


if __name__ == "__main__":
    main()

"""Ablations of the Hopper attention kernel: the product kernel against variants that switch off one
technique each, on the same inputs (dev/cuda/01_attention_sm90_ablation.cu: kernel options of the
library's internal entry point, and instantiations of the kernel template with other traits that the
library never builds). Timing there: CUDA events around each call after warm-up, the median, inputs
rotated when one set fits in L2; each variant's output is compared with the FlashAttention-2 kernel's
(max abs difference).

  cmake -B build -DMINILLM_DEV=ON && cmake --build build --target dev_01_attention_sm90_ablation
  python bench/ablate_attention.py [--bin build/dev/01_attention_sm90_ablation] [--variants fa2,sm90,...]

Prints one table (TFLOP/s per case and variant) and writes $OUT/attention_ablation.json when OUT is set.
"""
import argparse
import json
import os
import subprocess
import sys

VARIANTS = ["fa2", "sm90", "m128", "m192", "serial", "nopingpong", "serial_nopingpong", "nonpersistent", "static",
            "onegroup", "group48", "exp2_quarter", "exp2_third", "exp2_half"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "dev", "01_attention_sm90_ablation"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    results = {}
    for name in args.variants.split(","):  # one process per variant: a failing variant loses only its own row
        p = subprocess.run([args.bin, name], capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("JSON ")]
        if p.returncode != 0 or not line:
            print(f"{name}: failed\n{p.stderr[-2000:]}", flush=True)
            continue
        results[name] = json.loads(line[0].split(" ", 2)[2])
        print(f"{name}: " + " ".join(f"{r['tflops']:.0f}" for r in results[name]), flush=True)
    if not results:
        return 1
    names = list(results)
    cases = [r["case"] for r in results[names[0]]]
    print(f"{'B':>3} {'H':>3} {'N':>5} {'D':>4} {'mask':>6} | " + " ".join(f"{n[:11]:>11}" for n in names) + "  TFLOP/s")
    for i, (B, H, N, D, causal) in enumerate(cases):
        row = " ".join(f"{results[n][i]['tflops']:11.1f}" for n in names)
        bad = [n for n in names if results[n][i]["max_abs_diff"] > 0.05]
        print(f"{B:>3} {H:>3} {N:>5} {D:>4} {'causal' if causal else 'full':>6} | {row}" + (f"  DIFF {bad}" if bad else ""))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "attention_ablation.json"), "w") as f:
            json.dump(dict(cases=cases, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

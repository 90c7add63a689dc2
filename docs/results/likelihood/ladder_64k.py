"""The default model's bracket from K = 250 to 64,000 (issue 28): the ladder of
`python -m owf.evaluate /work/runs/fm-new-s0` (K = 250 ... 8000) joined with that of
`python -m owf.evaluate COPY --ais-steps 64000 --ais-bases defensive` (K = 2000 ... 64,000; fresh
chains: its rungs up to 8000 replicate the first's), the gap RAISE - AIS on the same 64 images,
and owf.image_eval.convergence_trend as it stood after each rung. Run from the repository root:
    python docs/results/likelihood/ladder_64k.py
"""
import json
from pathlib import Path

from owf.image_eval import convergence_trend
from owf.plots import save_ais_convergence

here = Path(__file__).parent
first = json.loads((here / "fm-new-s0" / "eval.json").read_text())
long = json.loads((here / "fm-new-s0-K64k" / "eval.json").read_text())
rows = sorted([r for r in first["ais_rows"] if r["base"] == "defensive"] +
              [r for r in long["ais_rows"] if r["steps"] > 8000], key=lambda r: r["steps"])
print("| K | AIS log ζ̂ (ESS of 64) | log-weight variance | AIS, all test | AIS, 64 images | RAISE, 64 images | gap |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['steps']} | {r['log_zeta']:.1f} ({r['ess']:.1f}) | {r['log_weight_var']:.0f} | {r['ais_bits_per_dim']:.3f} "
          f"| {r['ais_bits_per_dim_subset']:.3f} | {r['raise_bits_per_dim']:.3f} "
          f"| {r['raise_bits_per_dim'] - r['ais_bits_per_dim_subset']:+.3f} |")
print("\nthe trend after each rung (moves of the last 3 doublings):")
for i in range(4, len(rows) + 1):
    ks = [r["steps"] for r in rows[:i]]
    a = convergence_trend(ks, [r["ais_bits_per_dim"] for r in rows[:i]])
    b = convergence_trend(ks, [r["raise_bits_per_dim"] for r in rows[:i]])
    f = lambda t: (f"ratio {t['ratio']:.2f}, " if t["ratio"] else "") + (  # noqa: E731
        f"K needed {t['k_needed']}, limit {t['limit']:.3f}" if t["k_needed"] else "moves not shrinking")
    print(f"  up to K = {ks[-1]}: AIS {f(a)}; RAISE {f(b)}")
ladder = {"defensive": {"K": [r["steps"] for r in rows], "ais": [r["ais_bits_per_dim_subset"] for r in rows],
                        "raise": [r["raise_bits_per_dim"] for r in rows]}}
b = first["baselines"]
save_ais_convergence(here / "fm-new-s0-K64k" / "ais_convergence_250_64000.png", ladder,
                     {"per-pixel histogram": b["histogram_bits_per_dim"],
                      "atanh Gaussian": b["atanh_gaussian_bits_per_dim"], "LZMA": b["lzma_bits_per_dim"]},
                     "fashion-mnist, the default recipe (seed 0): AIS (64 chains) and RAISE (64 images) to K = 64,000")

"""Issue 29, item 4 (re-tune w and the learning rates): one markdown row per run, from its
metrics.json / metrics.jsonl (training) and eval.json (`python -m owf.evaluate RUN --ais-bases defensive`).
    python docs/results/likelihood/sweep/summary.py RUN [RUN ...]
FID is the final one (10,000 samples) and, since one checkpoint's FID moves by ±10, the mean ± sd of the
last four 1,000-step checkpoints; the bracket's numbers are at the ladder's largest K. "saturated" is the
tanh pre-activations' share past |a| = 3, or with --g-output margins the share of clamped pixels (marked c)."""
import json
import statistics
import sys
from pathlib import Path

KEYS = ("w", "lr_d", "lr_g")
print("| run | w | lr_D | lr_G | FID (last 4: mean ± sd) | smallest class | probe log q | saturated | "
      "AIS NLL (all test) | AIS / RAISE, 64 images | doubling moves AIS / RAISE | converged |")
print("|" + "---|" * 12)
for run in map(Path, sys.argv[1:]):
    cfg, m = json.loads((run / "config.json").read_text()), json.loads((run / "metrics.json").read_text())
    fids = [r["fid"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "fid" in r][-4:]
    row = [run.name, *(f"{cfg[k]:g}" for k in KEYS),
           f"{m['fid']:.1f} ({statistics.mean(fids):.1f} ± {statistics.stdev(fids):.1f})",
           f"{100 * m['min_class_share']:.1f}%", f"{m['probe_log_q']:,.0f}", f"{100 * m['saturated']:.1f}%" if "saturated" in m else f"{100 * m['clamped']:.1f}% c"]
    ev = run / "eval.json"
    if ev.is_file():
        e = json.loads(ev.read_text())
        top = max((r for r in e["ais_rows"] if r["base"] == e["ais_base"]), key=lambda r: r["steps"])
        row += [f"{e['test_bits_per_dim_ais']:.3f}", f"{top['ais_bits_per_dim_subset']:.3f} / {e['test_bits_per_dim_raise']:.3f}",
                f"{e['ais_doubling_move_bpd']:.3f} / {e['raise_doubling_move_bpd']:.3f}", "yes" if e["converged"] else "no"]
    else:
        row += ["not run"] * 4
    print("| " + " | ".join(row) + " |")

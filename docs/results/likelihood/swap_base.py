"""Continue a trained Gaussian-base image run with the Gaussian mixture as its base measure: does a
generator that already covers every class keep them when p_0 becomes multimodal? (Trained from the
start with `--d-base mixture`, G falls into one family of classes, docs/likelihood.md.)

    python docs/results/likelihood/swap_base.py RUN OUT [STEPS] [LR_SCALE]

Both networks and both Adam states come from RUN's checkpoint; D's network f is kept and only its
base changes, from the atanh Gaussian to owf.baselines.AtanhMixture (fitted here, as `--d-base
mixture` fits it), so P_D ∝ p_0 exp(f/w) starts as the old f over the new p_0. The learning rates are
the config's times LR_SCALE, constant; the persistent chains start afresh from the new defensive
base. OUT gets a checkpoint that `python -m owf.evaluate OUT` reads (config d_base = mixture; it has
no random or data streams, so `owf.train --resume` cannot continue it), every 1,000 steps the probe and
the classifier FID in metrics.jsonl, and samples.png. (fm-swap-s0 ran before energy_l2 was set here:
at 1e-3, docs/likelihood.md.)
"""
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from owf.checkpoint import load_checkpoint, save_atomic
from owf.config import Config
from owf.train import build, train_step

torch.set_num_threads(1)
run, out = Path(sys.argv[1]), Path(sys.argv[2])
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
lr_scale = float(sys.argv[4]) if len(sys.argv) > 4 else 0.25
state = load_checkpoint(run)
old = Config.from_saved(state["config"])
if old.d_base != "gaussian":
    sys.exit(f"{run}: d_base={old.d_base!r}; this swaps a Gaussian base for the mixture")
# energy_l2: runs saved before that field load with the old 1e-3 (LEGACY_VALUES); the default's is 3e-3
cfg = replace(old, d_base="mixture", out=str(out), steps=steps, energy_l2=3e-3)
out.mkdir(parents=True, exist_ok=False)
(out / "config.json").write_text(json.dumps(dict(cfg.to_dict(), swapped_from=str(run), lr_scale=lr_scale), indent=2))
device = torch.device("cpu")
task, G, D, opt_g, opt_d, gen = build(cfg, device)
G.load_state_dict(state["G"])
missing, unexpected = D.load_state_dict({k: v for k, v in state["D"].items() if not k.startswith("base_")}, strict=False)
assert not unexpected and all(k.startswith("base_") for k in missing), (missing, unexpected)
opt_g.load_state_dict(state["opt_g"])
opt_d.load_state_dict(state["opt_d"])
for opt, lr in ((opt_d, cfg.lr_d), (opt_g, cfg.lr_g)):
    for group in opt.param_groups:
        group["lr"] = lr * lr_scale
gen.manual_seed(cfg.seed + 123)
g_params = list(G.parameters())
t0 = time.perf_counter()
with open(out / "metrics.jsonl", "w") as log:
    for step in range(0, steps + 1):
        if step:
            train_step(cfg, task, G, D, opt_g, opt_d, gen, g_params, device)
        if step % 1000 == 0:
            row = {"step": step, "seconds": round(time.perf_counter() - t0, 1), **task.evaluate(G, step, step == steps)}
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
task.pictures(out, G, D, cfg, row)
save_atomic(dict(config=cfg.to_dict(), step=steps, seconds=time.perf_counter() - t0, world_size=1,
                 G=G.state_dict(), D=D.state_dict(), opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(),
                 event_shape=list(G.event_shape)), out / "checkpoint.pt")

"""Continue a trained image run with G's entropy from the exact log-det (issue 29, item 2).

    python docs/results/likelihood/finetune_entropy.py RUN STEPS K LR_SCALE EVERY OUT.jsonl [RUN_OUT]
                                                       [--d-lr-scale S] [--g-base]

Loads RUN's checkpoint (networks, optimisers, random and data streams, chains), sets
--entropy-samples K (0: the run's own --logdet estimate, the control), holds both learning rates at
LR_SCALE times the run's initial ones, and takes STEPS training steps (owf.train.train_step). Every
EVERY steps it writes the probe (exact log q and log|det J| of the 4 probe latents, the saturated
share) to OUT.jsonl, and every 4·EVERY steps and at the end a classifier FID of 2,000 samples
(seed 20,000; noisier than training's 10,000-sample FID) and importance sampling of log ζ from 64
of G's samples with their exact log q (is_exact.is_from_generator: log ζ̂, ESS, the log-weights'
mean and sd). The networks at the end go to OUT.jsonl.pt, and with RUN_OUT also a run folder
(checkpoint.pt with the new step count, in its config's steps too; a `finetune` record of source,
steps, K and LR_SCALE; samples.png) that `python -m owf.evaluate RUN_OUT` evaluates. Its config
says entropy_samples = K for the whole run, though only the last STEPS used it: the record says which.
--d-lr-scale S (default LR_SCALE) scales D's learning rate alone; 0 holds D fixed (Adam with a zero
step leaves it bitwise, checked at the end), so that G alone fits Eq. 17 against one P_D. --g-base
replaces RUN's generator by a new one started at the copula base (Config.g_base: q = p_0 at step 0,
a fresh Adam for it), so that the fit starts KL(p_0 ‖ P_D) from P_D; --g-hidden gives it other widths.
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from owf.checkpoint import load_checkpoint, save_atomic
from owf.config import Config
from owf.images import generator_samples, to_uint8
from owf.plots import save_image_grid
from owf.train import build, restore, train_step

from is_exact import is_from_generator


def main(run, steps, k, lr_scale, every, out, run_out=None, d_lr_scale=None, g_base=False, g_hidden=None):
    d_lr_scale = lr_scale if d_lr_scale is None else d_lr_scale
    torch.set_num_threads(1)
    if run_out and Path(run_out).exists():
        raise FileExistsError(f"RUN_OUT {run_out} already exists")
    state = load_checkpoint(run)
    cfg = replace(Config.from_saved(state["config"]), entropy_samples=k)
    if g_hidden and not g_base:
        raise ValueError(f"--g-hidden {g_hidden} builds a new generator: it needs --g-base")
    if g_base:
        cfg = replace(cfg, g_base=True, g_mixture=False, g_hidden=g_hidden or cfg.g_hidden)
    device = torch.device("cpu")
    task, G, D, opt_g, opt_d, gen = build(cfg, device, False, state["D"])     # the fitted base from the checkpoint
    if g_base:                  # RUN's D and its optimiser; G and its Adam new
        D.load_state_dict(state["D"]), opt_d.load_state_dict(state["opt_d"])
    else:
        restore(state, G, D, opt_g, opt_d)
    gen.set_state(state["rng"])
    task.load_state_dict(state["task"])
    for opt, lr in ((opt_d, cfg.lr_d * d_lr_scale), (opt_g, cfg.lr_g * lr_scale)):
        opt.param_groups[0]["lr"] = lr
    d_start = {k_: v.clone() for k_, v in D.state_dict().items()} if d_lr_scale == 0 else None
    g_params = list(G.parameters())
    t0 = time.time()
    with open(out, "w") as f:
        for step in range(steps + 1):
            if step:
                train_step(cfg, task, G, D, opt_g, opt_d, gen, g_params, device)
            if step % every == 0:
                row = dict(step=step, seconds=round(time.time() - t0, 1), **task.probe(G))
                if step % (4 * every) == 0 or step == steps:
                    fid = task._scorer()(generator_samples(G, 2000, 20_000))
                    row.update({k_: v for k_, v in fid.items() if k_ != "class_shares"})
                    modes = G.training, D.training
                    G.eval(), D.eval()
                    row.update(is_from_generator(G, lambda x: D(x) / cfg.w))
                    G.train(modes[0]), D.train(modes[1])
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
                f.flush()
    if d_start is not None and not all(torch.equal(v, D.state_dict()[k_]) for k_, v in d_start.items()):
        raise RuntimeError("D_LR_SCALE 0 did not hold D fixed")
    torch.save(dict(G=G.state_dict(), D=D.state_dict()), out + ".pt")
    if run_out:
        Path(run_out).mkdir(parents=True)
        # a cached ζ is the old model's; other ranks' streams and buffers are not this process's
        state = {k_: v for k_, v in state.items() if k_ not in ("log_zeta", "rngs", "tasks", "rank_buffers")}
        done = state["step"] + steps           # the config's steps too, so that the folder reads as a finished run
        save_atomic(dict(state, config=replace(cfg, steps=done).to_dict(), step=done, G=G.state_dict(), D=D.state_dict(),
                         opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), rng=gen.get_state(),
                         task=task.state_dict(), world_size=1, seconds=state.get("seconds", 0) + time.time() - t0,
                         finetune=dict(source=str(run), source_step=state["step"], steps=steps, entropy_samples=k,
                                       lr_scale=lr_scale, d_lr_scale=d_lr_scale, g_base=g_base)),
                    Path(run_out) / "checkpoint.pt")
        save_image_grid(Path(run_out) / "samples.png", to_uint8(generator_samples(G, 64, 10_000 + cfg.seed)),
                        f"{run} + {steps} steps, entropy_samples={k}, lr x{lr_scale}, D's x{d_lr_scale}"
                        + (f", G from the base ({cfg.g_hidden})" if g_base else ""))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, kind in (("run", str), ("steps", int), ("k", int), ("lr_scale", float), ("every", int), ("out", str)):
        p.add_argument(name, type=kind)
    p.add_argument("run_out", nargs="?")
    p.add_argument("--d-lr-scale", type=float)
    p.add_argument("--g-base", action="store_true")
    p.add_argument("--g-hidden", help="with --g-base: the new generator's widths (default: RUN's)")
    main(**vars(p.parse_args()))

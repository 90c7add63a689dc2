"""Continue a finished 2D run from its checkpoint under other options, and watch its thinnest mode.

    python -m owf.experiments.continue_run RUN_DIR [--steps 5000] [--lr-scale 0.2] \
        [--defensive F] [--g-alpha A] [--mode K] [--reports 10] [--out FILE.jsonl]

The README's mechanism checks ("Why grid runs fail"): does an option pull a lost or thin mode back,
and does it stop Eq. 16's runaway? The run folder is only read. Both networks and both Adam states
come from the checkpoint; the learning rates are the config's times --lr-scale (constant, no
decay); the random stream is reseeded with --seed, so runs with different options see the same
data batches and noise. Every steps/reports steps (and at step 0) it prints one JSON line:

- `watched_lead`: D(μ_k)/w minus the median over the other modes' means, for the watched mode k
  (--mode, default the mode with the fewest of G's samples at step 0). A lost mode under Eq. 16's
  runaway has a large positive lead: log ζ̂ cannot see it, so D is paid for lowering the rest.
- `watched_samples`, `fewest_samples`, `modes`: of 20,000 samples of G (fixed latent draws),
  those nearest the watched mode, the fewest nearest any mode, and the modes with more than 20.
- `log_zeta_quadrature`: log ∫ exp(D/w) over the data's box (Riemann sum, 721² cells);
  `watched_log_share`: the log of the share of that mass within 1 (half the grid's spacing) of μ_k.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace

import torch

from ..checkpoint import load_checkpoint
from ..config import Config
from ..metrics import nearest_mode
from ..plots import plane_grid
from ..train import build, restore, train_step
from ..cli import user_errors_exit

WATCH_SAMPLES = 20_000
QUAD_RES = 721


@torch.no_grad()
def mode_report(G, D, data, w: float, watched: int | None) -> dict:
    """The JSON line described in the module docstring; watched None: pick the thinnest mode."""
    means = data.means
    y = G.sample(WATCH_SAMPLES, torch.Generator().manual_seed(0))
    counts = torch.bincount(nearest_mode(y, means)[0], minlength=len(means))
    k = int(counts.argmin()) if watched is None else watched
    e = D(means).squeeze(-1) / w
    others = torch.cat([e[:k], e[k + 1:]])
    pts, area = plane_grid(*data.extent(), QUAD_RES)
    pts = pts.float()
    E = D(pts).squeeze(-1) / w
    log_zeta = float(torch.logsumexp(E, 0)) + math.log(area)
    near_k = (pts - means[k]).norm(dim=1) < 1.0
    share = float(torch.logsumexp(E[near_k], 0)) + math.log(area) - log_zeta
    return dict(mode=k, mean=means[k].tolist(), watched_lead=round(float(e[k] - others.median()), 3),
                watched_samples=int(counts[k]), fewest_samples=int(counts.min()),
                modes=int((counts > 20).sum()), log_zeta_quadrature=round(log_zeta, 4),
                watched_log_share=round(share, 4))


def continue_run(run, steps: int = 5000, lr_scale: float = 0.2, reports: int = 10, seed: int = 123,
                 mode: int | None = None, out=None, **options) -> list[dict]:
    """Continue `run` (a folder with checkpoint.pt) for `steps` steps with the config's fields in
    `options` replaced (e.g. defensive=0.25, g_alpha=0.75); returns the report lines."""
    if steps <= 0 or reports <= 0 or lr_scale <= 0:
        raise ValueError(f"steps={steps}, reports={reports} and lr_scale={lr_scale} must be positive")
    state = load_checkpoint(run)
    cfg = replace(Config.from_saved(state["config"]), **options)
    if cfg.loss != "owf":
        raise ValueError(f"{run} was trained with loss={cfg.loss!r}; continue_run watches Eq. 16/17 (owf)")
    device = torch.device("cpu")
    if cfg.data not in ("ring", "grid"):
        raise ValueError(f"continue_run is for the 2D mixtures; {run} was trained on {cfg.data}")
    task, G, D, opt_g, opt_d, gen = build(cfg, device)
    data = task.data
    restore(state, G, D, opt_g, opt_d)
    for opt, lr in ((opt_d, cfg.lr_d), (opt_g, cfg.lr_g)):
        for group in opt.param_groups:
            group["lr"] = lr * lr_scale
    gen.manual_seed(seed)
    g_params = list(G.parameters())
    sink = open(out, "w") if out else None
    rows = []

    def report(step):
        row = {"step": step, **mode_report(G, D, data, cfg.w, rows[0]["mode"] if rows else mode)}
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    report(0)
    every = max(1, steps // reports)
    for step in range(1, steps + 1):
        train_step(cfg, task, G, D, opt_g, opt_d, gen, g_params, device)
        if step % every == 0 or step == steps:
            report(step)
    if sink:
        sink.close()
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m owf.experiments.continue_run", description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--lr-scale", type=float, default=0.2, help="both learning rates, times the config's")
    p.add_argument("--reports", type=int, default=10)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--mode", type=int, default=None, help="index into the data's means (default: the thinnest)")
    p.add_argument("--defensive", type=float, default=None, help="override the run's --defensive")
    p.add_argument("--g-alpha", type=float, default=None, help="override the run's --g-alpha")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the JSON lines here")
    return p


@user_errors_exit
def main(argv=None):
    a = build_parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    options = {k: v for k, v in (("defensive", a.defensive), ("g_alpha", a.g_alpha)) if v is not None}
    continue_run(a.run, a.steps, a.lr_scale, a.reports, a.seed, a.mode, a.out, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())

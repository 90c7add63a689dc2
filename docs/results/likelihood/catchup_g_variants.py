"""The catch-up phase (D held, G again at the base) with another generator loss or a wider h (issue 29).

    python docs/results/likelihood/catchup_g_variants.py RUN STEPS K OUT_DIR [--renyi ALPHA] [--local C]

RUN: a 2,000-step `--g-base` checkpoint (its D and fitted base are kept, and held). G is built again at the
base (q = p_0) with a fresh Adam at the run's lr_G, held constant, as `owf.train`'s catch-up phase does. Each
step draws S = cfg.samples latents (their batch statistics serve G's BatchNorms) and takes the exact
log|det J| of the first K (Eq. 10, all n tangents):
- by default the phase's own loss, -mean_S D(y) - w exact_entropy_control_variate(logdet, exact logdet of K);
- --renyi ALPHA: the Rényi loss of --g-alpha (losses.generator_loss_renyi's formula) over the K samples alone
  with their exact log q: sum_K wbar_i (-w logdet_i - D(y_i)), wbar = softmax((1 - ALPHA)(D/w - log q))
  (detached); ALPHA = 1 is Eq. 17 on the K samples alone, the control of ALPHA < 1.
--local C adds to h a full-resolution branch, h(u) = h_DCGAN(u) + h_local(u), h_local = three 3x3 convs
1 -> C -> BN -> LeakyReLU -> C -> BN -> LeakyReLU -> 1 channel, the last zero (so q = p_0 still at the start).
At the end: OUT_DIR/log.jsonl (the K samples' log-weights at step 1 and every 25 steps), nets.pt, and result.json:
training's classifier FID on 10,000 samples (seed 10,000 + seed) and importance sampling with S = 1,000
exact draws (is_exact.is_from_generator, the draws of is_exact.py).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from owf.checkpoint import load_checkpoint
from owf.config import Config
from owf.images import generator_samples
from owf.losses import exact_entropy_control_variate
from owf.train import ENTROPY_CHUNK, build

sys.path.insert(0, str(Path(__file__).parent))
from is_exact import is_from_generator  # noqa: E402


class WithLocal(nn.Module):
    """h(u) = h_global(u) + h_local(u) for u [B, n]: the DCGAN layers and a full-resolution conv stack."""

    def __init__(self, h_global: nn.Module, channels: int, shape):
        super().__init__()
        self.g = h_global
        self.l = nn.Sequential(nn.Unflatten(1, tuple(shape)),
                               nn.Conv2d(shape[0], channels, 3, padding=1), nn.BatchNorm2d(channels), nn.LeakyReLU(0.2),
                               nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.LeakyReLU(0.2),
                               nn.Conv2d(channels, shape[0], 3, padding=1))
        nn.init.zeros_(self.l[-1].weight), nn.init.zeros_(self.l[-1].bias)

    def forward(self, u):
        return self.g(u) + self.l(u)


def main(run, steps, k, out, renyi=None, local=0):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    state = load_checkpoint(run)
    cfg = Config.from_saved(state["config"])
    if not cfg.g_base:
        raise ValueError(f"{run} was not trained with --g-base: its G has no base to start again at")
    task, G, D, _, _, gen = build(cfg, torch.device("cpu"), False, state["D"])     # G at the base
    D.load_state_dict(state["D"])
    gen.set_state(state["rng"])
    D.requires_grad_(False)
    if local:
        torch.manual_seed(cfg.seed + 1)
        G.net[0].h = WithLocal(G.net[0].h, local, G.net[0].shape)
    opt = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    G.train(), D.train()
    t0 = time.time()
    with open(out / "log.jsonl", "w") as f:
        for step in range(1, steps + 1):
            y, _, logdet, u, _ = G.sample_with_log_prob(cfg.samples, cfg.logdet, gen, return_u=True)
            ld = G.exact_logdet_at_batch(u[:k], u.detach(), chunk=ENTROPY_CHUNK)
            if renyi is None:
                d_all = D(y)
                d = d_all[:k]
                loss = -d_all.mean() - cfg.w * exact_entropy_control_variate(logdet, ld)
            else:
                d = D(y[:k])
            lw = (d / cfg.w - (G.log_latent(u[:k]).to(ld.dtype) - ld)).detach()
            if renyi is not None:
                wbar = torch.softmax((1 - renyi) * lw.double(), 0).to(ld.dtype)
                loss = (wbar * (-cfg.w * ld - d)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 25 == 0 or step == 1:
                row = dict(step=step, seconds=round(time.time() - t0, 1), lw_mean=float(lw.mean()),
                           lw_sd=float(lw.std()) if k > 1 else None)
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
    torch.save(dict(G=G.state_dict(), D=D.state_dict()), out / "nets.pt")
    G.eval(), D.eval()
    fid = task._scorer()(generator_samples(G, 10000, 10_000 + cfg.seed))
    res = dict(run=str(run), steps=steps, k=k, renyi=renyi, local=local, seconds=round(time.time() - t0),
               fid=fid["fid"], min_class_share=fid["min_class_share"], class_shares=fid["class_shares"])
    res.update(is_from_generator(G, lambda x: D(x) / cfg.w, 1000))
    print(json.dumps(res), flush=True)
    (out / "result.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, kind in (("run", str), ("steps", int), ("k", int), ("out", str)):
        p.add_argument(name, type=kind)
    p.add_argument("--renyi", type=float, metavar="ALPHA", help="the Rényi loss on the K samples alone (default: the phase's)")
    p.add_argument("--local", type=int, default=0, help="channels of a full-resolution conv branch in h (0: none)")
    main(**vars(p.parse_args()))

"""Appendix B, reproduced: does maximising the one-sample log‖Jv‖ (Eq. 9) raise the true log|det J|?

    python -m owf.experiments.logdet_success [--networks 50] [--steps 100] [--out runs/appendix_b]

For each vector size n in {8, 16, 32} and depth in {1, 4, 16, 32}: random networks R^n -> R^n built
from layers drawn uniformly from {Linear, LeakyReLU(0.2), BatchNorm} in random order (the first is
always Linear, so each network has parameters to train). BatchNorm runs in eval mode: a learnable
per-feature affine map, so each sample's Jacobian is its own n x n matrix. Each network is trained
with Adam (lr 5e-4) to maximise mean_b log‖J(z_b) v_b‖, v_b uniform on the unit sphere and
redrawn every step, on a fixed batch of latent points z_b ~ N(0, I). After each step the true
mean_b log|det J(z_b)| is recomputed exactly; a step "succeeds" when it went up.

Writes success.md (the table of success rates), success.json, and logdet_success.png (Fig. 9:
the step-to-step changes of the true log-det, one panel per cell). The paper reports > 85% in
every cell.
"""
from __future__ import annotations

import argparse
import sys
import json
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from owf_kernels import linear_jvp  # noqa: E402

from ..cli import user_errors_exit  # noqa: E402
from ..model import slogdet  # noqa: E402

SIZES = (8, 16, 32)
DEPTHS = (1, 4, 16, 32)


def random_network(n: int, depth: int, rng: random.Random) -> nn.Sequential:
    kinds = ["linear"] + [rng.choice(["linear", "leaky_relu", "batchnorm"]) for _ in range(depth - 1)]
    layers = []
    for k in kinds:
        if k == "linear":
            layers.append(nn.Linear(n, n))
        elif k == "leaky_relu":
            layers.append(nn.LeakyReLU(0.2))
        else:
            bn = nn.BatchNorm1d(n)
            with torch.no_grad():   # non-trivial running statistics, so BN is a real affine map
                bn.running_mean.normal_(0, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
            layers.append(bn)
    return nn.Sequential(*layers).eval()


def push(net: nn.Sequential, z: torch.Tensor, V: torch.Tensor):
    """y = net(z) and the tangents J(z) V, V: [T, B, n] -> [T, B, n]. Linear layers go through
    owf_kernels.linear_jvp; LeakyReLU and eval-mode BatchNorm are diagonal, so their tangents are
    a per-feature scaling (slope where the input is negative; γ / sqrt(running_var + eps))."""
    h, H = z, V
    for layer in net:
        if isinstance(layer, nn.Linear):
            h, H = linear_jvp(h, H, layer.weight, layer.bias, "identity")
        elif isinstance(layer, nn.LeakyReLU):
            scale = torch.where(h > 0, 1.0, layer.negative_slope)
            h, H = h * scale, H * scale
        else:
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            h, H = (h - layer.running_mean) * scale + layer.bias, H * scale
    return h, H


def true_logdet(net, z) -> torch.Tensor:
    """mean_b log|det J(z_b)|: all n columns of J pushed forward exactly, then slogdet."""
    B, n = z.shape
    _, H = push(net, z, torch.eye(n).unsqueeze(1).expand(n, B, n))
    return slogdet(H.permute(1, 2, 0)).logabsdet.mean()


def one_sample_logdet(net, z, g) -> torch.Tensor:
    """Eq. 9: mean_b log‖J(z_b) v_b‖, v_b uniform on the unit sphere."""
    v = torch.randn(z.shape, generator=g)
    v = v / v.norm(dim=1, keepdim=True)
    _, jv = push(net, z, v.unsqueeze(0))
    return torch.log(jv[0].norm(dim=1)).mean()


def run_cell(n, depth, networks, steps, batch, lr, seed, bar=None):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    deltas = []
    for _ in range(networks):
        net = random_network(n, depth, rng)
        z = torch.randn(batch, n, generator=g)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        with torch.no_grad():
            prev = true_logdet(net, z).item()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            (-one_sample_logdet(net, z, g)).backward()
            opt.step()
            with torch.no_grad():
                cur = true_logdet(net, z).item()
            deltas.append(cur - prev)
            prev = cur
        if bar is not None:
            bar.update(1)
    d = torch.tensor(deltas)
    return {"n": n, "depth": depth, "success": float((d > 0).double().mean()), "steps": len(deltas),
            "median_delta": float(d.median()), "deltas": deltas}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m owf.experiments.logdet_success", description=__doc__.split("\n")[0])
    p.add_argument("--networks", type=int, default=50, help="random networks per cell (the paper: 50)")
    p.add_argument("--steps", type=int, default=100, help="optimisation steps per network")
    p.add_argument("--batch", type=int, default=16, help="latent points per network")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/appendix_b")
    return p


@user_errors_exit
def main(argv=None):
    a = build_parser().parse_args(argv)
    for k in ("networks", "steps", "batch"):
        if getattr(a, k) <= 0:
            raise ValueError(f"--{k} must be positive, got {getattr(a, k)}")
    sizes = [int(s) for s in a.sizes.split(",")]
    depths = [int(s) for s in a.depths.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    with tqdm(total=len(sizes) * len(depths) * a.networks, desc="networks", unit="net") as bar:
        for n in sizes:
            for depth in depths:
                bar.set_postfix(n=n, depth=depth)
                cells.append(run_cell(n, depth, a.networks, a.steps, a.batch, a.lr, a.seed + 1000 * n + depth, bar))
    # table
    lines = [f"Appendix B: success rate (true log|det J| increased after a step of maximising log‖Jv‖), "
             f"{a.networks} networks x {a.steps} steps per cell, lr {a.lr}", "",
             "| n \\ depth | " + " | ".join(str(d) for d in depths) + " |", "|---|" + "---|" * len(depths)]
    for n in sizes:
        row = [c for c in cells if c["n"] == n]
        lines.append(f"| {n} | " + " | ".join(f"{100 * c['success']:.1f}%" for c in row) + " |")
    (out / "success.md").write_text("\n".join(lines) + "\n")
    (out / "success.json").write_text(json.dumps([{k: v for k, v in c.items() if k != "deltas"} for c in cells],
                                                 indent=1))
    # Fig. 9
    fig, axes = plt.subplots(len(sizes), len(depths), figsize=(3.2 * len(depths), 2.4 * len(sizes)), squeeze=False)
    for c in cells:
        ax = axes[sizes.index(c["n"])][depths.index(c["depth"])]
        ax.plot(c["deltas"], ".", ms=1.5, alpha=0.5)
        ax.axhline(0, color="k", lw=1.5)
        ax.set_title(f"n={c['n']}, depth {c['depth']}: {100 * c['success']:.1f}%", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle("change of the true log|det J| per step of maximising log‖Jv‖", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "logdet_success.png", dpi=110)
    plt.close(fig)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where does log ζ̂ disagree with the quadrature? Split both over the nearest data mode.

    python -m owf.experiments.zeta_by_mode RUN_DIR [--samples 1000000]

For each mode k of a 2D mixture: log of the importance sum over generator samples whose nearest
mean is k (their density summed over all preimages, as owf.density does in 2D; with --no-preimages,
Eq. 10's density and signed weights), and log of the quadrature (Riemann sum over the
domain box, cells as in owf.density.quadrature_log_zeta) over the cells whose nearest mean is k.
A mode covered twice by the generator shows up as ≈ log 2 = 0.69 with --no-preimages (Eq. 10
counts one preimage), and as ≈ 0 with the preimages.

It also counts the covers directly, by quadrature in the latent plane (`cover_counts`): over a
fine grid of u, Σ |det J(u)| du over the cells that g_n maps into the disc of radius 3σ around the
mode, divided by the disc's area, is the number of sheets over the disc (1 for an injective g_n);
with sign(det J) it is the degree. Unlike the importance sum it sees sheets of tiny latent mass.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

from owf_kernels import combine_partials

from ..cli import user_errors_exit
from ..density import OWFModel, load, signed_estimate, signed_partials
from ..metrics import nearest_mode
from ..plots import plane_grid


@torch.no_grad()
def zeta_by_mode(run, samples: int = 1_000_000, seed: int = 0, chunk: int = 100_000, res: int = 1500,
                 preimages: bool = True):
    """[(mode mean, log IS share, log quadrature share, G's sample share)] for every mode of the run's
    data set; `run` is a run folder or checkpoint, or a model owf.load has returned. A mode whose
    quadrature share (P_D's mass) is far above its sample share (q's mass) carries importance
    weights that many times the average: it is where G has thinned a mode of P_D."""
    model = run if isinstance(run, OWFModel) else load(run)
    means = model.data.means.double()
    K = len(means)
    g = torch.Generator().manual_seed(seed)
    parts = torch.tensor([[[-math.inf, 0.0, 0.0, 0.0]] * 2] * K, dtype=torch.float64)   # [K, (+, -), 4]
    counts = torch.zeros(K, dtype=torch.float64)
    for start in range(0, samples, chunk):
        y, log_q, sign = model.sample_with_log_prob(min(chunk, samples - start), g, signed=True, preimages=preimages)
        log_w = model.energy_on_domain(y).double() - log_q.double()
        near = nearest_mode(y, means)[0]
        counts += torch.bincount(near, minlength=K)
        for k in range(K):
            new = signed_partials(log_w.masked_fill(near != k, -math.inf), sign)
            parts[k] = torch.stack([combine_partials([parts[k, i], new[i]]) for i in range(2)])
    pts, area = plane_grid(*model.domain, res)
    E = torch.cat([model.energy(p.float()).double() for p in pts.split(262_144)])
    nq = torch.cat([nearest_mode(p, means)[0] for p in pts.split(262_144)])
    return [(means[k].tolist(), signed_estimate(*parts[k])[0],
             float(torch.logsumexp(E[nq == k], 0)) + math.log(area), float(counts[k]) / samples) for k in range(K)]


@torch.no_grad()
def cover_counts(g_logdet, means, radius: float, half_width: float = 8.0, res: int = 2000, chunk: int = 100_000):
    """[(unsigned, signed)] covers of the disc of `radius` around each of `means` [K, 2].

    g_logdet(u [B, 2]) -> (y [B, 2], log|det J| [B], sign det J [B]). Cells: a res x res grid over
    the latent square [-half_width, half_width]², so mass beyond it (e^-32 at 8) is left out:

        cover_k = Σ_{cells c: |g(u_c) - μ_k| < r} |det J(u_c)| Δu² / (π r²)   (Σ sign·|det J| for the degree)
    """
    t = torch.linspace(-half_width, half_width, res, dtype=torch.float64)
    cell = float(t[1] - t[0]) ** 2
    means = torch.as_tensor(means, dtype=torch.float64)
    acc = torch.zeros(len(means), 2, dtype=torch.float64)
    U = torch.cartesian_prod(t, t)
    for u in U.split(chunk):
        y, ld, sign = g_logdet(u.float())
        det = ld.double().exp()
        d = torch.cdist(y.double(), means)                     # [B, K]
        inside = (d < radius).double()
        acc[:, 0] += inside.t() @ det
        acc[:, 1] += inside.t() @ (det * sign.double())
    return (acc * cell / (math.pi * radius ** 2)).tolist()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m owf.experiments.zeta_by_mode", description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-preimages", action="store_true", help="Eq. 10's one-preimage density, signed weights")
    return p


@user_errors_exit
def main(argv=None):
    a = build_parser().parse_args(argv)
    model = load(a.run)
    if model.G.n != 2:
        raise ValueError(f"zeta_by_mode is for 2D data; {a.run} has n = {model.G.n}")
    rows = zeta_by_mode(model, a.samples, a.seed, preimages=not a.no_preimages)
    covers = cover_counts(lambda u: model.G.logdet(u, "exact", signed=True), model.data.means, 3 * model.data.std)
    lz = math.log(sum(math.exp(q) for _, _, q, _ in rows))
    print("| mode | log ζ̂ share (IS) | quadrature share | IS − quadrature | P_D's mass | G's samples | "
          "covers of the 3σ disc (signed) |\n|---|---|---|---|---|---|---|")
    for (m, i, q, n), (c, cs) in zip(rows, covers):
        print(f"| ({m[0]:g}, {m[1]:g}) | {i:.3f} | {q:.3f} | {i - q:+.3f} | {100 * math.exp(q - lz):.2f}% | "
              f"{100 * n:.2f}% | {c:.3f} ({cs:+.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

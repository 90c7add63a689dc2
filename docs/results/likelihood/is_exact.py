"""Importance sampling of log ζ with the generator's exact log q, and where G's samples sit in P_D.

    python docs/results/likelihood/is_exact.py RUN [NETS.pt] [SAMPLES.png] [N]

For RUN's model (or its networks replaced by NETS.pt's G and D, e.g. finetune_entropy.py's output):
the mean and spread of D/w on 500 dequantised test images and on 64 generator samples (eval mode),
and importance sampling with N samples of G (default 64) and their exact log q (all n tangents, Eq. 10):
log ζ̂ = logsumexp(D/w - log q) - log N, its ESS, and the log-weights' mean and spread. "-" skips
NETS.pt or SAMPLES.png.
"""
import math
import sys

import torch

from owf import load
from owf.images import dequantise_unit, generator_samples, load_images, to_uint8
from owf.plots import save_image_grid


@torch.no_grad()
def exact_draws(G, n=64, seed=7, chunk=112):
    """n samples of G with their exact log q (Eq. 10, all tangents), 16 at a time from a generator seeded
    `seed`: yields (y [≤16, *shape], log q [≤16] float64, their latents u [≤16, n]). G as it is (call it
    in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    for i in range(0, n, 16):
        u = G.noise(min(16, n - i), g)
        y, ld = G.logdet(u, "exact", chunk=chunk)
        yield y, (G.log_latent(u) - ld).double(), u


@torch.no_grad()
def is_from_generator(G, energy, n=64, seed=7, chunk=112):
    """Importance sampling of log ζ from exact_draws(G, n, seed): log ζ̂ = logsumexp(energy - log q) - log n,
    its ESS, and the log-weights' mean and sd."""
    lw = torch.cat([energy(y).double() - log_q for y, log_q, _ in exact_draws(G, n, seed, chunk)])
    ess = float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))
    return dict(is_g_log_zeta=float(torch.logsumexp(lw, 0) - math.log(len(lw))), is_g_ess=ess,
                is_g_lw_mean=float(lw.mean()), is_g_lw_sd=float(lw.std()))


def main(run, nets=None, picture=None, n=64):
    nets, picture, n = (None if nets == "-" else nets), (None if picture == "-" else picture), int(n)
    torch.set_num_threads(1)
    m = load(run)
    if nets:
        sd = torch.load(nets)
        m.G.load_state_dict(sd["G"])
        m.D.load_state_dict(sd["D"])
    G = m.G.eval()
    m.D.eval()
    test, _ = load_images(m.config.data, m.config.data_root, train=False)
    with torch.no_grad():
        e_test = m.energy(dequantise_unit(test[:500], torch.Generator().manual_seed(0)))
        y = generator_samples(G, 64, 5)
        e_gen = m.energy(y)
    r = is_from_generator(G, m.energy, n)
    if picture:
        save_image_grid(picture, to_uint8(y), f"{run}: samples")
    print(f"D/w: test {e_test.mean():.1f} ± {e_test.std():.1f}, generator {e_gen.mean():.1f} ± {e_gen.std():.1f}")
    print(f"IS with the exact log q, {n} samples: log zeta_hat {r['is_g_log_zeta']:.1f}, "
          f"ESS {r['is_g_ess']:.2f}, log-weights {r['is_g_lw_mean']:.1f} ± {r['is_g_lw_sd']:.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:])

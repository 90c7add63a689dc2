"""Is importance sampling from G held back by its BatchNorms' running statistics? (issue 29)

    python docs/results/likelihood/bn_recalibrate.py RUN [BATCHES]

G samples and IS use eval mode, whose BatchNorms normalise by running averages (momentum 0.1) that trail
the weights while lr_G is constant. This recomputes them with the final weights, as the plain average over
BATCHES (default 100) train-mode batches of cfg.samples = 64 draws (seeded 123), prints how far they moved
(mean |Δμ| in units of the old σ; the range of the variance ratio), then importance sampling with S = 1,000
exact draws (is_exact.is_from_generator) to compare with is_exact.py's numbers for RUN.
"""
import sys
from pathlib import Path

import torch

from owf import load

sys.path.insert(0, str(Path(__file__).parent))
from is_exact import is_from_generator  # noqa: E402


def main(run, batches=100):
    torch.set_num_threads(1)
    m = load(run)
    G = m.G
    m.D.eval()
    bns = [x for x in G.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    old = [(b.running_mean.clone(), b.running_var.clone()) for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None                 # the plain average of the batches' statistics
    G.train()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _ in range(int(batches)):
            G.sample(m.config.samples, g)
    G.eval()
    for b, (mu, var) in zip(bns, old):
        print(f"BatchNorm({len(mu)}): mean |Δμ|/σ {((b.running_mean - mu).abs() / var.sqrt()).mean():.3f}, "
              f"variance ratio {(b.running_var / var).min():.3f}-{(b.running_var / var).max():.3f}")
    r = is_from_generator(G, m.energy, 1000)
    print(f"IS with the exact log q, 1000 samples, recalibrated: log zeta_hat {r['is_g_log_zeta']:.1f}, "
          f"ESS {r['is_g_ess']:.2f}, log-weights {r['is_g_lw_mean']:.1f} ± {r['is_g_lw_sd']:.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:])

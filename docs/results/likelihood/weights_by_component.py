"""Importance sampling from G, and G's classes, by the component of the base's mixture that G's latent drew (issue 29).

    python docs/results/likelihood/weights_by_component.py RUN [N] [CLASSIFIED]

With --g-base, G's latent u is the copula base's mixture Σ_k π_k N(μ_k, L_k L_kᵀ) over the normal
scores; each draw's component is the posterior's argmax (in n = 784 dimensions the posterior is one-hot).
1. N (default 1,000) draws with their exact log q (is_exact.exact_draws: the draws of is_exact.py) and
   log-weights D/w - log q, per component: its share, their mean ± sd and largest; the spread within the
   components against the whole; and what the best reweighting of the mixture would gain in
   KL(q ‖ P_D): with m_k the component's mean log-weight, π'_k ∝ π_k e^{m_k} gains
   log Σ_k π_k e^{m_k} - Σ_k π_k m_k nats (the components do not overlap), and π' itself.
2. CLASSIFIED (default 5,000) draws, eval mode, read by the FID's classifier: the class shares, and for
   each component its three commonest classes and its share of pullovers (the rarest class).
3. The test images, dequantised (seed 0), by the base's component of their normal scores (D's own
   coordinate): each component's share, its three commonest labels, and its share of pullovers, labelled
   and as the classifier reads them. (This depends on the base alone, not on G.)
"""
import sys
from pathlib import Path

import torch

from owf import load
from owf.classifier import load_classifier, to_unit
from owf.images import dequantise_unit, load_images, to_uint8

sys.path.insert(0, str(Path(__file__).parent))
from is_exact import exact_draws  # noqa: E402

NAMES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


@torch.no_grad()
def main(run, n=1000, classified=5000):
    n, classified = int(n), int(classified)
    torch.set_num_threads(1)
    m = load(run)
    G = m.G.eval()
    m.D.eval()
    if not G.base_latent:
        raise ValueError(f"{run}: G's latent is not the base's mixture (--g-base)")
    mix = G._base_mixture()
    pi = mix.log_pi.exp()
    component = lambda u: mix._log_joint(u.double()).argmax(1)           # noqa: E731
    lws, ks = [], []
    for y, log_q, u in exact_draws(G, n):
        lws.append(m.energy(y).double() - log_q)
        ks.append(component(u))
    lw, k = torch.cat(lws), torch.cat(ks)
    print(f"{run}: {n} draws, log-weights {lw.mean():.1f} ± {lw.std():.1f}")
    means = []
    for j in range(len(pi)):
        s = lw[k == j]
        means.append(float(s.mean()))
        print(f"component {j}: π {pi[j]:.3f}, drawn {len(s) / n:.3f}, log-weights {s.mean():.1f} ± {s.std():.1f}, "
              f"largest {s.max():.1f}")
    mt = torch.tensor(means, dtype=torch.float64)
    within = (sum(((lw[k == j] - lw[k == j].mean()) ** 2).sum() for j in range(len(pi))) / n).sqrt()
    print(f"sd within the components {within:.1f}, of all {lw.std():.1f}; the best reweighting gains "
          f"{float(torch.logsumexp(pi.log() + mt, 0) - (pi * mt).sum()):.2f} nats of KL(q ‖ P_D) with π' = "
          f"{[round(float(x), 3) for x in torch.softmax(pi.log() + mt, 0)]}")
    clf, g = load_classifier(m.config.data, m.config.data_root, False), torch.Generator().manual_seed(11)
    ks, cs = [], []
    for i in range(0, classified, 500):
        u = G.noise(min(500, classified - i), g)
        ks.append(component(u))
        cs.append(clf(to_unit(to_uint8(G(u)))).argmax(1))
    k, c = torch.cat(ks), torch.cat(cs)
    print(f"{classified} draws' classes: " + ", ".join(f"{NAMES[j]} {(c == j).float().mean():.3f}" for j in range(10)))
    for j in range(len(pi)):
        share = torch.bincount(c[k == j], minlength=10).float() / max(int((k == j).sum()), 1)
        print(f"component {j} ({float((k == j).float().mean()):.3f} of draws): "
              + ", ".join(f"{NAMES[o]} {share[o]:.2f}" for o in share.argsort(descending=True)[:3])
              + f"; pullovers {share[2]:.3f}")
    test, labels = load_images(m.config.data, m.config.data_root, train=False)
    x = dequantise_unit(test, torch.Generator().manual_seed(0))
    k = torch.cat([m.D.log_base_components(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    c = torch.cat([clf(to_unit(test[i:i + 1000])).argmax(1) for i in range(0, len(test), 1000)])
    print(f"the {len(test)} test images:")
    for j in range(len(pi)):
        share = torch.bincount(labels[k == j], minlength=10).float() / max(int((k == j).sum()), 1)
        print(f"component {j} ({float((k == j).float().mean()):.3f} of the images): labels "
              + ", ".join(f"{NAMES[o]} {share[o]:.2f}" for o in share.argsort(descending=True)[:3])
              + f"; pullovers {share[2]:.3f} labelled, {float((c[k == j] == 2).float().mean()):.3f} classified")


if __name__ == "__main__":
    main(*sys.argv[1:])

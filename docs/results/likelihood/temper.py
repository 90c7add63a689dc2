"""How much likelihood the trained energy carries over its own base, tempered: P_α(x) ∝ p_0(x) exp(α f(x)/w),
f/w = D/w - log p_0 (the network's part, owf.dcgan.ConvEnergy), α = 1 the model, α = 0 its base (the atanh
Gaussian or, with --d-base mixture, the Gaussian mixture: an exact density). The test NLL against the base's is

    ΔNLL(α) = -α E_test[f/w] + log ζ(α),   ζ(α) = E_{p_0}[exp(α f/w)],

log ζ(α) by importance sampling from p_0 itself (N draws, reliable while its ESS is large), and at the
given αs by AIS (64 chains, K steps, from p_0: the gaussian base, or the mixture) on the same tempered energy, a lower bound in
expectation: D' = f + (w/α) log p_0 with w' = w/α gives D'/w' = α f/w + log p_0. α is fitted on the
training split; the test split reads the result.

    python docs/results/likelihood/temper.py RUN [N] [K] [ALPHA ...]
"""
import json
import math
import sys

import torch

import owf
from owf.image_eval import dequantise
from owf.images import load_images

torch.set_num_threads(1)
run = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
K = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
ais_alphas = [float(a) for a in sys.argv[4:]] or [0.2, 1.0]
if not all(0 < a <= 1 for a in ais_alphas):
    sys.exit(f"AIS alphas {ais_alphas}: each in (0, 1] (alpha = 0 is the base itself, exact)")
m = owf.load(run)
D, w = m.D, m.w
if D.base_w != w:
    sys.exit(f"{run}: D's base weight is {D.base_w}, not w = {w} (d_base none?): nothing to temper against")
train_u8, _ = load_images(m.config.data, m.config.data_root, train=True)
test_u8, _ = load_images(m.config.data, m.config.data_root, train=False)


def f_over_w(x):
    with torch.no_grad():
        return torch.cat([(D(b.float()).double() - D.base_w * D.log_base(b.float())) / w for b in x.split(500)])


g = torch.Generator().manual_seed(0)
f_train = f_over_w(dequantise(train_u8[:N], g))
f_test = f_over_w(dequantise(test_u8, g))                 # the whole test split
if D.base_components == 1:      # the Gaussian base, drawn as the recorded runs drew it
    eps = torch.randn(N, D.base_mu.numel(), generator=g, dtype=torch.float64)
    x_base = torch.tanh(D.base_mu + eps @ D.base_L.T).view(N, *test_u8.shape[1:])
else:                           # --d-base mixture (u = atanh x) or copula (its normal scores z): x in the base's coordinate
    from owf.ais import Box, coordinate_of
    p0 = m.base_density()
    x_base = coordinate_of(p0, Box(-1.0, 1.0)).to_x(p0.sample(N, g).double()).view(N, *test_u8.shape[1:])
f_base = f_over_w(x_base)
n = test_u8[0].numel()
per_bpd = n * math.log(2)
out = {"run": run, "N": N, "f_over_w": {k: [round(float(v.mean()), 2), round(float(v.std()), 2)]
                                        for k, v in (("train", f_train), ("test", f_test), ("base", f_base))}}
rows = []
for a in (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0):
    lw = a * f_base
    lz = float(torch.logsumexp(lw, 0) - math.log(N))
    ess = float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))
    rows.append(dict(alpha=a, log_zeta_is=round(lz, 3), ess_is=round(ess, 1),
                     d_nll_train_bpd=round((-a * float(f_train.mean()) + lz) / per_bpd, 5),
                     d_nll_test_bpd=round((-a * float(f_test.mean()) + lz) / per_bpd, 5)))
    print(json.dumps(rows[-1]), flush=True)
out["is"] = rows
best = min((r for r in rows if r["ess_is"] >= 0.02 * N), key=lambda r: r["d_nll_train_bpd"])
out["alpha_fitted_on_train"] = best["alpha"]          # among the αs where IS keeps an ESS of 2% of N
ais_rows = []
for a in ais_alphas:
    m.w, D.base_w = w / a, w / a
    est = m.estimate_log_zeta(64, "ais", steps=K, base="gaussian" if D.base_components == 1 else "base",
                              generator=torch.Generator().manual_seed(1))
    m.w, D.base_w = w, w
    ais_rows.append(dict(alpha=a, K=K, log_zeta_ais=round(est.log_zeta, 3), ess_ais=round(est.ess, 1),
                         d_nll_test_bpd=round((-a * float(f_test.mean()) + est.log_zeta) / per_bpd, 5)))
    print(json.dumps(ais_rows[-1]), flush=True)
out["ais"] = ais_rows
print(json.dumps({k: v for k, v in out.items() if k not in ("is", "ais")}))

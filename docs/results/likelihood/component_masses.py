"""Where P_D puts its mass among its base's components, and a P_D whose components keep the data's shares.

Over a mixture base, P_D = e^{f/w} Σ_k π_k N_k / ζ is itself a mixture: component k's part π_k N_k e^{f/w} has
mass π_k ζ_k / ζ (ζ_k = E_{N_k}[e^{f/w}], slice AIS's per-component estimates). The same energy with the base's
weights π'_k ∝ π_k / ζ_k (ConvEnergy's base_log_pi; f unchanged) gives each part back its base share π_k, and is
normalised by the same estimates: P' = e^{f/w} Σ_k π_k N_k / ζ_k. Weights ρ_k in place of π_k (ρ_k N_k e^{f/w}/ζ_k)
fitted by EM to the training images (the tilted components held) give P_ρ. Each NLL is a lower bound in
expectation, as heldout_nll's with an AIS log ζ̂ is, here through each ζ̂_k.

    python docs/results/likelihood/component_masses.py RUN SLICE.jsonl [ROW]   (ROW: which line of slice_ais.py's
                                                                             output, default the last)

Prints JSON: P_D's component masses; the share of the test images whose base posterior picks each component; the
test bits/dim of P_D (with slice AIS's log ζ̂; as owf.image_eval.heldout_nll, seed 0), of P' and of P_ρ.
"""
import json
import math
import sys

import torch

from owf import load
from owf.image_eval import dequantise
from owf.images import load_images

torch.set_num_threads(1)
run, rows = sys.argv[1], [json.loads(l) for l in open(sys.argv[2])]
row = rows[int(sys.argv[3]) if len(sys.argv) > 3 else -1]
model = load(run, "cpu")
D, w = model.D, model.w
log_pi = D.base_log_pi.double()
lz_k = torch.tensor(row["component_log_zetas"], dtype=torch.float64)
lz = float(torch.logsumexp(log_pi + lz_k, 0))


@torch.no_grad()
def parts(u8, seed):
    """(f/w [N], log π_k p_0,k(x) [N, K]) of dequantised images, heldout_nll's draws for seed 0."""
    g, F, J = torch.Generator().manual_seed(seed), [], []
    for b in u8.split(1000):
        x = dequantise(b, g).float()
        F.append(D.tilt(x).double() / w)
        J.append(D.log_base_components(x))
    return torch.cat(F), torch.cat(J)


def bpd(lp):
    return float(-(lp.mean()) - 784 * math.log(2 / 256)) / (784 * math.log(2))


test_u8, _ = load_images(model.config.data, model.config.data_root, train=False)
train_u8, _ = load_images(model.config.data, model.config.data_root, train=True)
f, lj = parts(test_u8, 0)
lp_d = f + torch.logsumexp(lj, 1) - lz                                   # P_D
lp_1 = f + torch.logsumexp(lj - lz_k, 1)                                 # P': each part its base share π_k
ft, ljt = parts(train_u8[:20000], 1)
log_comp = ljt - log_pi - lz_k                                           # log of the normalised tilted component k, less f/w
log_rho = log_pi.clone()
for _ in range(50):                                                      # EM for ρ with the components held
    log_rho = torch.log_softmax(torch.logsumexp(torch.log_softmax(log_rho + log_comp, 1), 0), 0)
lp_r = f + torch.logsumexp(log_rho + lj - log_pi - lz_k, 1)
out = {"run": run, "slice_row": {k: row[k] for k in ("steps", "replicate", "log_zeta")},
       "p_d_component_masses": [round(float(v), 4) for v in torch.softmax(log_pi + lz_k, 0)],
       "base_weights": [round(float(v), 4) for v in log_pi.exp()],
       "test_share_by_base_posterior": [round(float(v), 4) for v in torch.bincount(lj.argmax(1), minlength=len(log_pi)) / len(lj)],
       "test_bits_per_dim_p_d": bpd(lp_d), "test_bits_per_dim_base_shares": bpd(lp_1),
       "rho_fitted": [round(float(v), 4) for v in log_rho.exp()], "test_bits_per_dim_rho": bpd(lp_r)}
print(json.dumps(out))

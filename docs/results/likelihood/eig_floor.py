"""Does the copula base improve if its fitted covariances' small eigenvalues are floored? Each component's Σ_k = L_k L_kᵀ
(read from a run's D, the --d-base copula fit) has eigenvalues from 2e-3 to 184; with λ ← max(λ, τ) for each τ given,
the base's test bits/dim (one dequantisation draw per image, as mixture_components.py) and on 10,000 training images.

    python docs/results/likelihood/eig_floor.py RUN 0.003 0.01 0.03      (eig_floor.txt: RUN a default run, whose base
                                                                          every default run shares)
"""
import json
import sys
import time

import torch
from owf.baselines import CopulaMixture, bits_per_dim
from owf.images import load_images
torch.set_num_threads(2)
s = torch.load(f'{sys.argv[1]}/checkpoint.pt', map_location='cpu', weights_only=False)['D']
test, _ = load_images("fashion-mnist", "", train=False)
train, _ = load_images("fashion-mnist", "", train=True)
log_pi, mu, L, lpb = s['base_log_pi'], s['base_mu'], s['base_L'], s['base_log_p_bin']
S = L @ L.transpose(1, 2)
lam, U = torch.linalg.eigh(S)            # ascending
print("eig quantiles per comp (min, 10%, 50%, 90%, max):")
for k in range(len(lam)):
    q = torch.quantile(lam[k], torch.tensor([0, .1, .5, .9, 1.], dtype=lam.dtype))
    print(k, [f"{v:.2e}" for v in q.tolist()])
def score(Lk, data, off):
    m = CopulaMixture(log_pi, mu, Lk, lpb)
    nll = torch.cat([-m.log_prob_u8(b, torch.Generator().manual_seed(off + i)) for i, b in enumerate(data.split(2000))])
    return bits_per_dim(nll, 784)
def variant(name, lam2):
    t = time.time()
    L2 = torch.linalg.cholesky(U @ torch.diag_embed(lam2) @ U.transpose(1, 2))
    print(json.dumps({"variant": name, "test": score(L2, test, 0), "train10k": score(L2, train[:10000], 100),
                      "s": round(time.time() - t)}), flush=True)
variant("as fitted", lam)
for tau in [float(a) for a in sys.argv[2:]]:
    variant(f"floor {tau}", lam.clamp_min(tau))

"""Importance sampling from G (exact log q) of P_D and of P', the same energy with its base's mixture weights
π'_k ∝ π_k / ζ_k, so that each base component's part of the density keeps its base share π_k (component_masses.py):

    P_D = e^{f/w} Σ_k π_k N_k / ζ,    P' = e^{f/w} Σ_k π_k N_k / ζ_k     (N_k with the coordinate's Jacobian)

with ζ_k, ζ from a slice AIS run (slice_ais.py's JSON line). P' is normalised through the ζ̂_k, so importance
sampling of its normaliser should give log 1 = 0 (a lower bound in expectation: positive only by chance).

    python docs/results/likelihood/is_calibrated.py RUN SLICE.jsonl [N] [ROW]

The draws are is_exact.py's (exact_draws, seed 7). Prints JSON: for P_D and P', log Ẑ, the ESS, the log-weights'
mean ± sd; and G's draws' shares by base component against P_D's and P''s masses.
"""
import json
import math
import sys
from pathlib import Path

import torch

from owf import load

sys.path.insert(0, str(Path(__file__).parent))
from is_exact import exact_draws  # noqa: E402


def summary(lw):
    return {"log_z": float(torch.logsumexp(lw, 0) - math.log(len(lw))),
            "ess": float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))),
            "lw_mean": float(lw.mean()), "lw_sd": float(lw.std())}


@torch.no_grad()
def main(run, slice_jsonl, n=1000, row=-1):
    torch.set_num_threads(1)
    m = load(run)
    G, D, w = m.G.eval(), m.D.eval(), m.w
    rows = [json.loads(line) for line in open(slice_jsonl)]
    lz_k = torch.tensor(rows[int(row)]["component_log_zetas"], dtype=torch.float64)
    log_pi = D.base_log_pi.double()
    lz = float(torch.logsumexp(log_pi + lz_k, 0))
    lw_d, lw_c, ks = [], [], []
    for y, log_q, u in exact_draws(G, int(n)):
        lj = D.log_base_components(y)                                   # log π_k p_0,k(y) [B, K]
        f = D.tilt(y).double() / w
        lw_d.append(f + torch.logsumexp(lj, 1) - log_q)                   # D/w - log q, D's base in float64
        lw_c.append(f + torch.logsumexp(lj - lz_k, 1) - log_q)
        ks.append(lj.argmax(1))
    lw_d, lw_c, k = torch.cat(lw_d), torch.cat(lw_c), torch.cat(ks)
    out = {"run": run, "draws": len(k), "slice_log_zeta": lz, "p_d": summary(lw_d), "p_calibrated": summary(lw_c),
           "g_component_shares": [round(float(v), 4) for v in torch.bincount(k, minlength=len(lz_k)) / len(k)],
           "p_d_masses": [round(float(v), 4) for v in torch.softmax(log_pi + lz_k, 0)],
           "p_calibrated_masses": [round(float(v), 4) for v in log_pi.exp()]}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

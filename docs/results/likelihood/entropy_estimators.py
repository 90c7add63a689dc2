"""What each entropy estimator sees of J_h on a trained 28x28 generator (issue 29, item 2), and its cost.

    python docs/results/likelihood/entropy_estimators.py RUN [OUT.json]

At the 4 probe latents of owf.tasks.ImageTask.probe (G in eval mode) it forms J_h, the Jacobian of
g_n = tanh ∘ h without the tanh (all n = 784 tangents), and reports:
- its singular values σ (spread, condition number, how much of log|det J_h| = Σ log σ the smallest
  tenth holds);
- Eq. 9's log‖J_h v‖ over 64 unit directions v: its mean and spread. For large n, ‖J_h v‖² concentrates
  at mean(σ²), so T probes average to log RMS(σ) - the same number one probe gives - and the gradient
  of log‖J_h v‖ weighs direction i by σ_i² / Σσ², where the exact d log|det J_h| = Σ dσ_i / σ_i weighs
  it by 1/σ_i: the weight each puts on the smallest tenth of the σ;
- the cost per sample of: Eq. 9 (one tangent), T = 8 probes, the exact log-det with its gradient (the
  --entropy-samples path), and one conjugate-gradient iteration of Hutchinson's estimator (a JVP and a
  VJP of one sample), each timed on this machine (1 thread), best of 3.
"""
import json
import math
import sys
import time

import torch

from owf import load
from owf.model import log1m_tanh2


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(run, out=None):
    torch.set_num_threads(1)
    m = load(run)
    G = m.G.eval()
    seed = m.config.seed
    g = torch.Generator().manual_seed(30_000 + seed)          # the probe's stream (ImageTask.probe)
    u = G.noise(4, g)
    h = G.net[:-1]
    n = G.n
    with torch.no_grad():
        a, cols = G.jacobian_columns(u, 112, net=h)           # [n, B, n]: column t of J_h is cols[t, b]
    J = cols.permute(1, 2, 0).double()                        # [B, n, n]
    sv = torch.linalg.svdvals(J)                              # [B, n], descending
    ld_h = sv.log().sum(1)
    tanh_term = log1m_tanh2(a.reshape(4, -1).double()).sum(1)
    rows = []
    gv = torch.Generator().manual_seed(1)
    for b in range(4):
        s = sv[b]
        v = torch.randn(64, n, generator=gv, dtype=torch.float64)
        v = v / v.norm(dim=1, keepdim=True)
        lnorm = (v @ J[b].T).norm(dim=1).log()
        tenth = n // 10
        small = s[-tenth:]
        w_eq9 = (s ** 2) / (s ** 2).sum()                     # E_v of d log‖Jv‖'s weight on direction i
        w_exact = (1 / s) / (1 / s).sum()
        rows.append(dict(
            logdet_h=float(ld_h[b]), tanh_term=float(tanh_term[b]), logdet=float(ld_h[b] + tanh_term[b]),
            sigma_max=float(s[0]), sigma_min=float(s[-1]), log10_condition=float(torch.log10(s[0] / s[-1])),
            median_log_sigma=float(s.log().median()),
            smallest_tenth_share_of_logdet_h=float(small.log().sum() / ld_h[b]),
            eq9_mean=float(lnorm.mean()), eq9_sd=float(lnorm.std()), log_rms_sigma=float(0.5 * (s ** 2).mean().log()),
            eq9_weight_on_smallest_tenth=float(w_eq9[-tenth:].sum()),
            exact_weight_on_smallest_tenth=float(w_exact[-tenth:].sum())))
    # ---- cost per sample, train mode as in a training step (BatchNorm at a batch of 64's statistics)
    G.train()
    batch = G.noise(64, g)
    params = [p for p in G.parameters()]

    def eq9(T):
        def f():
            v = torch.randn(T, 64, n, generator=gv)
            v = v / v.norm(dim=-1, keepdim=True)
            from owf_kernels import jvp
            a, a_dot = jvp(h, (batch,), (v,), batch_norm="per_sample")
            l = a_dot.reshape(T, 64, -1).norm(dim=-1).log().mean()
            torch.autograd.grad(l, params, allow_unused=True)
        return f

    def exact():
        l = G.exact_logdet_at_batch(batch[:1], batch, chunk=112).sum()
        torch.autograd.grad(l, params, allow_unused=True)

    x1 = batch[:1].clone().requires_grad_(True)

    def cg_iteration():                                       # one J^T J w product: a JVP and a VJP of one sample
        G.eval()
        w = torch.randn(1, n, generator=gv)
        _, jw = torch.func.jvp(lambda z: h(z), (x1.detach(),), (w,))
        y = h(x1)
        torch.autograd.grad(y, x1, jw)
        G.train()

    cost = {"eq9_T1_per_batch_of_64": best_of(eq9(1)), "eq9_T8_per_batch_of_64": best_of(eq9(8)),
            "exact_with_gradient_per_sample": best_of(exact), "cg_iteration_per_sample": best_of(cg_iteration)}
    res = {"run": run, "probe": rows, "seconds": cost}
    print(json.dumps(res, indent=1))
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])

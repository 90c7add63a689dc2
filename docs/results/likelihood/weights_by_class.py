"""Where G's samples sit against P_D, class by class: importance sampling from G with its exact log q.

    python docs/results/likelihood/weights_by_class.py RUN [N] [OUT.json]

N samples of G (default 1,000; is_exact.exact_draws, the same draws as is_exact.py), each with its
log-weight log w = D/w - log q (Eq. 10's exact log q, all n tangents) and the project's classifier's
class (owf.classifier, as the FID's class shares). Per class: G's share, the share P_D gives it by
self-normalised importance sampling (Σ_class w / Σ w: as noisy as the ESS is small), and the mean and sd
of the log-weights; the spread between classes' means against the spread within them says whether
KL(q ‖ P_D) is G's mix of classes or the shape of each. Also the log-weight's parts over G's samples:
D/w = f/w + log p_0 (the network and the base, base_w = w), and log q.
"""
import json
import math
import sys

import torch
from owf_kernels import log_zeta_partials, partials_to_estimate

from owf import load
from owf.classifier import load_classifier

from is_exact import exact_draws


@torch.no_grad()
def main(run, n=1000, out=None):
    n = int(n)
    torch.set_num_threads(1)
    m = load(run)
    G, D = m.G.eval(), m.D.eval()
    clf = load_classifier(m.config.data, m.config.data_root, progress=False).eval()
    parts = {k: [] for k in ("lw", "energy", "log_base", "log_q", "cls")}
    for i, (y, log_q, _) in enumerate(exact_draws(G, n)):
        e = m.energy(y).double()
        parts["lw"].append(e - log_q)
        parts["energy"].append(e)
        base = getattr(D, "base_w", 0)    # D = f + base_w log p_0, so D/w = f/w + (base_w/w) log p_0
        parts["log_base"].append((base / m.w) * D.log_base(y).double() if base else torch.zeros_like(e))
        parts["log_q"].append(log_q)
        parts["cls"].append(clf(y.float()).argmax(1))
        print(f"{min(16 * (i + 1), n)}/{n}", file=sys.stderr, end="\r")
    lw, e, lb, lq, cls = (torch.cat(parts[k]) for k in ("lw", "energy", "log_base", "log_q", "cls"))
    w = torch.softmax(lw, 0)                   # the self-normalised weights, for P_D's class shares
    log_zeta, _, ess = partials_to_estimate(log_zeta_partials(lw, torch.zeros_like(lw)))
    res = dict(run=run, samples=n, log_zeta=log_zeta, ess=ess, lw_mean=float(lw.mean()), lw_sd=float(lw.std()),
               f_over_w=dict(mean=float((e - lb).mean()), sd=float((e - lb).std())),
               log_base=dict(mean=float(lb.mean()), sd=float(lb.std())), log_q=dict(mean=float(lq.mean()), sd=float(lq.std())),
               corr_lw_f=float(torch.corrcoef(torch.stack([lw, e - lb]))[0, 1]),
               corr_lw_log_base_minus_log_q=float(torch.corrcoef(torch.stack([lw, lb - lq]))[0, 1]),
               classes=[])
    within = 0.0
    for c in range(int(cls.max()) + 1 if len(cls) else 0):
        k = cls == c
        if not k.any():
            res["classes"].append(dict(cls=c, share_g=0.0))
            continue
        within += float(((lw[k] - lw[k].mean()) ** 2).sum())
        res["classes"].append(dict(cls=c, share_g=float(k.double().mean()), share_pd=float(w[k].sum()),
                                   lw_mean=float(lw[k].mean()), lw_sd=float(lw[k].std()) if k.sum() > 1 else 0.0,
                                   lw_max=float(lw[k].max())))
    res["lw_sd_within_classes"] = math.sqrt(within / max(n - 1, 1))
    res["lw_sd_between_classes"] = math.sqrt(max(float(lw.var()) - within / max(n - 1, 1), 0.0))
    print(f"log ζ̂ {res['log_zeta']:.1f}, ESS {res['ess']:.2f}, log-weights {res['lw_mean']:.1f} ± {res['lw_sd']:.1f} "
          f"(within classes {res['lw_sd_within_classes']:.1f}, between {res['lw_sd_between_classes']:.1f}); "
          f"f/w {res['f_over_w']['mean']:.1f} ± {res['f_over_w']['sd']:.1f}, log p_0 {res['log_base']['mean']:.1f} ± "
          f"{res['log_base']['sd']:.1f}, log q {res['log_q']['mean']:.1f} ± {res['log_q']['sd']:.1f}; "
          f"corr(log w, f/w) {res['corr_lw_f']:.2f}, corr(log w, log p_0 - log q) {res['corr_lw_log_base_minus_log_q']:.2f}")
    print("class  G's share  P_D's share (IS)  log-weights: mean ± sd, max")
    for r in res["classes"]:
        if r["share_g"]:
            print(f"{r['cls']:5d}  {r['share_g']:9.3f}  {r['share_pd']:16.3f}  {r['lw_mean']:.1f} ± {r['lw_sd']:.1f}, {r['lw_max']:.1f}")
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])

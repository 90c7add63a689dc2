"""log ζ of a trained image model by AIS with elliptical slice transitions from each Gaussian component of its
base p_0 (owf.ais.slice_ais; `model.estimate_log_zeta(M, "ais-slice", steps=K)`), at each K of a ladder, with
replicates on fresh streams: does it converge, and where, against eval.json's other lower bounds?

    python docs/results/likelihood/slice_ais.py RUN OUT.jsonl [--steps 100 400 1600] [--chains 640] [--replicates 2]
                                                              [--classify]

One JSON line per run: K, replicate, log ζ̂, its delta-method se, the pooled ESS, each component's log ζ̂_k and
ESS, the energy's evaluations per transition, seconds. With --classify, each run also reads its chains' final
images with the project's classifier: P_D's class shares two ways, weighted (the images' self-normalised AIS
weights, log_weights) and by component (each component's chains unweighted, times its share of ζ̂, π_k ζ̂_k / ζ̂,
which trusts the chains to have reached P_D's share r_k P_D), and rebalanced (the same per component, times its
base weight π_k: the shares of P' = e^{f/w} Σ_k π_k N_k / ζ_k, OWFModel.rebalance_base). --picture PNG draws each
component's first 8 final images, one row per component, for the last run. Run with one thread
(torch.set_num_threads(1)).
"""
import argparse
import json

import torch

from owf import load
from owf.classifier import load_classifier
from owf.images import to_uint8
from owf.plots import save_image_grid


def class_shares(est, classifier) -> dict:
    """P_D's class shares from a slice AIS run's final images (module docstring)."""
    with torch.no_grad():
        label = torch.cat([classifier(x).argmax(1) for x in est.samples.split(500)])
    C, M = len(est.component_log_zetas), est.chains_per_component
    w = torch.softmax(est.log_weights, 0)
    mass = torch.softmax(est.log_weights.view(C, M).logsumexp(1), 0)                 # π_k ζ̂_k / ζ̂
    per = torch.nn.functional.one_hot(label, 10).double().view(C, M, 10).mean(1)       # each component's chains
    weighted = torch.zeros(10, dtype=torch.float64).index_add_(0, label, w.double())
    pi = torch.softmax(est.log_weights.view(C, M).logsumexp(1) - torch.tensor(est.component_log_zetas), 0)  # π_k
    return {"class_shares_weighted": [round(float(v), 4) for v in weighted],
            "class_shares_by_component": [round(float(v), 4) for v in (mass[:, None] * per).sum(0)],
            "class_shares_rebalanced": [round(float(v), 4) for v in (pi[:, None] * per).sum(0)]}


def main(run, out, steps=(100, 400, 1600), chains=640, replicates=2, classify=False, picture=None):
    torch.set_num_threads(1)
    model = load(run, "cpu")
    classifier = load_classifier(model.config.data) if classify else None
    with open(out, "a") as f:
        for K in steps:
            for r in range(replicates):
                est = model.estimate_log_zeta(chains, "ais-slice", steps=K, generator=torch.Generator().manual_seed(1000 * K + r))
                row = dict(run=run, steps=K, replicate=r, **{k: est.to_dict()[k] for k in (
                    "log_zeta", "se", "ess", "num_samples", "chains_per_component", "component_log_zetas",
                    "component_ess", "evaluations", "seconds")}, **(class_shares(est, classifier) if classify else {}))
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
                f.flush()
    if picture:
        C, M = len(est.component_log_zetas), est.chains_per_component
        save_image_grid(picture, to_uint8(est.samples.view(C, M, *est.samples.shape[1:])[:, :8].flatten(0, 1)),
                        f"slice AIS's final images (K = {K}), a row per base component;\nP_D's mass in each: " + ", ".join(
                            f"{100 * v:.1f}%" for v in torch.softmax(est.log_weights.view(C, M).logsumexp(1), 0)))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--steps", type=int, nargs="+", default=[100, 400, 1600])
    p.add_argument("--chains", type=int, default=640)
    p.add_argument("--replicates", type=int, default=2)
    p.add_argument("--classify", action="store_true")
    p.add_argument("--picture", default=None)
    main(**vars(p.parse_args()))

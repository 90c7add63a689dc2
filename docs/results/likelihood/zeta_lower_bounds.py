"""More of the two estimates of log ζ that `python -m owf.evaluate` runs at fixed sizes (issue 29): importance
sampling from the base p_0 at S up to 10^6 (eval.json: 10^5), and AIS from p_0 with K transitions (eval.json's
top rung: 1,000). Each is a lower bound in expectation of log ζ; the question is whether they still rise.

    python docs/results/likelihood/zeta_lower_bounds.py RUN OUT.json [--is-samples 1000000] [--ais-steps 4000]

Prints and writes: IS from p_0, its running log ζ̂ and ESS at S = 10^4, 10^5, 10^6 (one stream, seed 11); AIS
from p_0 with 64 chains (seed 12) at K, its log ζ̂, ESS and seconds. Run with one thread (torch.set_num_threads(1)).
"""
import argparse
import json
import time
import warnings

import torch
from owf_kernels import LogZetaAccumulator

from owf import load


def main(run, out, is_samples=1_000_000, ais_steps=4000, chains=64):
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")          # each 10^4-sample piece warns of its low ESS; the pool's is printed
    model = load(run, "cpu")
    res = {"run": run, "is_base": [], "ais": None}
    g = torch.Generator().manual_seed(11)
    pool, t0 = LogZetaAccumulator(), time.perf_counter()        # the pooled estimate, 10^4 draws at a time
    checkpoints = {10 ** k for k in range(4, 8)} | {is_samples}
    while pool.count < is_samples:
        lw = model.estimate_log_zeta(10_000, "base", 1000, g, keep_log_weights=True).log_weights.double()
        pool.update(lw, torch.zeros_like(lw))                    # log w = f/w, given as d = log w, log q = 0
        if pool.count in checkpoints:
            lz, _, ess = pool.estimate()
            row = dict(samples=pool.count, log_zeta=lz, ess=ess, seconds=round(time.perf_counter() - t0, 1))
            res["is_base"].append(row)
            print(json.dumps(row), flush=True)
    if ais_steps:
        t0 = time.perf_counter()
        est = model.estimate_log_zeta(chains, "ais", steps=ais_steps, base="base", generator=torch.Generator().manual_seed(12),
                                      batch_size=chains)
        res["ais"] = dict(steps=ais_steps, chains=chains, log_zeta=est.log_zeta, se=est.se, ess=est.ess,
                          seconds=round(time.perf_counter() - t0, 1))
        print(json.dumps(res["ais"]), flush=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--is-samples", type=int, default=1_000_000)
    p.add_argument("--ais-steps", type=int, default=4000)
    main(**{k.replace("-", "_"): v for k, v in vars(p.parse_args()).items()})

"""AIS's log ζ̂ and test NLL from several bases on one run (issue 28's "two bases agree"): 64 chains,
a pilot per base, K = 2000 and 8000, the whole dequantised test split as owf.evaluate draws it.
    python docs/results/likelihood/two_bases.py RUN [BASE ...]     (default: gaussian uniform)"""
import json
import math
import sys

import torch

import owf
from owf.baselines import bits_per_dim
from owf.image_eval import dequantise
from owf.images import load_images

torch.set_num_threads(1)
run, bases = sys.argv[1], sys.argv[2:] or ["gaussian", "uniform"]
model = owf.load(run)
te, _ = load_images(model.config.data, model.config.data_root, train=False)
g = torch.Generator().manual_seed(0)
x = torch.cat([dequantise(b, g) for b in te.split(1000)])
e = torch.cat([model.energy(b.float()).double() for b in x.split(1000)])
for base in bases:
    ss = model.tune_ais(base, generator=torch.Generator().manual_seed(1))
    for i, K in enumerate((2000, 8000)):
        est = model.estimate_log_zeta(64, "ais", steps=K, base=base, step_sizes=ss,
                                      generator=torch.Generator().manual_seed(100 + i))
        print(json.dumps({"base": base, "K": K, "log_zeta": round(est.log_zeta, 1), "ess": round(est.ess, 2),
                          "bits_per_dim": round(bits_per_dim(float(-(e - est.log_zeta).mean()), math.prod(x.shape[1:])), 4),
                          "accept": round(est.accept, 3), "seconds": round(est.seconds)}), flush=True)

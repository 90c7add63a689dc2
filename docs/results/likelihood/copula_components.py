"""The copula base against its component count K (CopulaMixture.fit_pixels with K in place of its
COMPONENTS = 10; EM, 6 rounds, seed 0): test bits/dim (the baseline table's dequantisation draws, as
mixture_components.py), and the classifier's FID and class shares of 10,000 of its samples (as
per_class_base.py): does a finer base score better, and draw fewer blurred tops (shirts) and more pullovers?
Each fit is saved to OUT/copula-K.pt (log π, μ, L, the margins).

    python docs/results/likelihood/copula_components.py OUT 20 30     (one JSON line each: copula_components.jsonl)
"""
import json
import sys
import time
from pathlib import Path

import torch

from owf.baselines import CopulaMixture, bits_per_dim
from owf.classifier import ClassifierFID, load_classifier
from owf.images import load_images

torch.set_num_threads(1)
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
train, _ = load_images("fashion-mnist", train=True)
test, _ = load_images("fashion-mnist", train=False)
fid = ClassifierFID(load_classifier("fashion-mnist"), test)
for K in map(int, sys.argv[2:]):
    t = time.time()
    base = CopulaMixture.fit_pixels(train, K)
    fit_s = time.time() - t
    torch.save({"log_pi": base.log_pi, "mu": base.mu, "L": base.L, "log_p_bin": base.log_p_bin}, out / f"copula-{K}.pt")
    nll = torch.cat([-base.log_prob_u8(b, torch.Generator().manual_seed(i)) for i, b in enumerate(test.split(2000))])
    tr = torch.cat([-base.log_prob_u8(b, torch.Generator().manual_seed(100 + i)) for i, b in enumerate(train[:10000].split(2000))])
    samples = base.coordinate.to_x(base.sample64(10000, torch.Generator().manual_seed(0))).float().view(10000, 1, 28, 28)
    res = fid(samples)
    print(json.dumps({"components": K, "test_bits_per_dim": bits_per_dim(nll, 784), "train10k_bits_per_dim": bits_per_dim(tr, 784),
                      "fid": round(res["fid"], 1), "class_shares": res["class_shares"], "min_class_share": res["min_class_share"],
                      "pi_max": float(base.log_pi.exp().max()), "pi_min": float(base.log_pi.exp().min()),
                      "fit_seconds": round(fit_s)}), flush=True)

"""The atanh mixture base's own test bits/dim against its component count K: owf.baselines.AtanhMixture's
EM (6 rounds, seed 0) with K in place of its COMPONENTS = 10 and the covariances' shrink in place of its 1e-3,
scored as owf.evaluate's baseline_table scores it (the same dequantisation draws), and on 10,000 training images;
"copula:K" fits the same EM to the pixels' normal scores under their histograms instead (owf.baselines.CopulaMixture,
--d-base copula; K = 1: the Gaussian copula with histogram margins).
    python docs/results/likelihood/mixture_components.py 10 20 20:0.1 copula:1   (K, K:shrink or copula:K[:shrink];
                                                                                  one JSON line each: mixture_components.jsonl)"""
import json, sys, time
from functools import partial
import torch
from owf.baselines import CopulaMixture, GaussianMixtureBase, OnPixels, bits_per_dim, dequantised_u
from owf.images import load_images
torch.set_num_threads(1)
train, _ = load_images("fashion-mnist", "", train=True)
test, _ = load_images("fashion-mnist", "", train=False)
u = dequantised_u(train, torch.Generator().manual_seed(0))[0]
for arg in sys.argv[1:]:
    copula = arg.startswith("copula:")
    parts = arg.split(":")[copula:]
    K, shrink = int(parts[0]), float((parts + ["1e-3"])[1])
    t = time.time()
    m = CopulaMixture.fit_pixels(train, K, shrink, 0) if copula else GaussianMixtureBase.fit(u, K, 6, shrink, 0)
    score = m.log_prob_u8 if copula else partial(OnPixels.log_prob_u8, m)      # the copula: in its own coordinate
    nll = torch.cat([-score(b, torch.Generator().manual_seed(i)) for i, b in enumerate(test.split(2000))])
    tr = torch.cat([-score(b, torch.Generator().manual_seed(100 + i)) for i, b in enumerate(train[:10000].split(2000))])
    print(json.dumps({"components": K, "shrink": shrink, **({"coordinate": "normal scores (copula)"} if copula else {}), "test_bits_per_dim": bits_per_dim(nll, 784), "train10k_bits_per_dim": bits_per_dim(tr, 784),
                      "seconds": time.time() - t}), flush=True)

"""The classifier's class shares (and classifier FID) of 10,000 samples of a run's base measure p_0
(--d-base copula), and of the 10,000 test images, with the base's mixture weights: where the
generator's class shares start from when it starts at the base (--g-base).

    python docs/results/likelihood/base_class_shares.py RUN
"""
import json
import sys

import torch

from owf import load
from owf.classifier import ClassifierFID, load_classifier
from owf.images import load_images, to_unit

torch.set_num_threads(1)
m = load(sys.argv[1])
p0 = m.base_density()
g = torch.Generator().manual_seed(0)
samples = torch.cat([m._gaussian_batch(1000, g, p0)[0].cpu() for _ in range(10)])
test, _ = load_images("fashion-mnist", train=False)
fid = ClassifierFID(load_classifier("fashion-mnist"), test)
keys = ("fid", "class_shares", "min_class_share")
for name, images in (("p_0 samples", samples), ("test images", to_unit(test))):
    r = fid(images)
    print(name, json.dumps({k: r[k] for k in keys}))
print("mixture weights", [round(float(v), 4) for v in p0.log_pi.exp()])

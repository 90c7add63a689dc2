"""A copula base with one component per class label (hard responsibilities from the labels, one M step:
π = the label shares, 10% each), beside the default's EM fit (K = 10): the classifier's class shares and
FID of 10,000 samples of each, and each one's test bits/dim (one dequantisation draw per image).

    python docs/results/likelihood/per_class_base.py
"""
import json

import torch

from owf.baselines import CopulaMixture, NormalScores, PixelHistogram, _m_step, bits_per_dim, dequantised_y
from owf.classifier import ClassifierFID, load_classifier
from owf.images import load_images

torch.set_num_threads(1)
train, labels = load_images("fashion-mnist", train=True)
test, _ = load_images("fashion-mnist", train=False)
coordinate = NormalScores(PixelHistogram(train).log_p_bin)
y = dequantised_y(train, torch.Generator().manual_seed(0))
z = torch.cat([coordinate.scores(part)[0] for part in y.split(5000)]).double()
fid = ClassifierFID(load_classifier("fashion-mnist"), test)
per_class = CopulaMixture(*_m_step(z, torch.nn.functional.one_hot(labels, 10).double(), 1e-3),
                          coordinate.log_p_bin, coordinate)
for name, base in (("per-class", per_class), ("EM (the default)", CopulaMixture.fit_pixels(train))):
    samples = coordinate.to_x(base.sample64(10000, torch.Generator().manual_seed(0))).float().view(10000, 1, 28, 28)
    res = fid(samples)
    nll = torch.cat([-base.log_prob_u8(part, torch.Generator().manual_seed(i)) for i, part in enumerate(test.split(2000))])
    print(name, json.dumps({"fid": round(res["fid"], 1), "class_shares": res["class_shares"],
                            "test_bits_per_dim": bits_per_dim(nll, 784)}), flush=True)

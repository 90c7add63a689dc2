"""The classifier FID of a run folder's generator on 10,000 samples, drawn as training's final FID is
(seed 20,000 + the run's seed), with the class shares: for run folders that owf.train did not write
(finetune_entropy.py's RUN_OUT).

    python docs/results/likelihood/fid10k.py RUN [RUN ...]
"""
import json
import sys

import torch

from owf import load
from owf.images import generator_samples
from owf.tasks import make_task

torch.set_num_threads(1)
for run in sys.argv[1:]:
    m = load(run)
    scores = make_task(m.config, False)._scorer()(generator_samples(m.G, 10_000, 20_000 + m.config.seed))
    print(run, json.dumps({k: scores[k] for k in ("fid", "min_class_share", "class_shares")}))

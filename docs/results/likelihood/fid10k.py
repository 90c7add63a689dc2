"""The final evaluation that training writes to metrics.json (ImageTask.evaluate: the classifier FID of
--fid-samples samples, 10,000 in the image recipes, seed 20,000 + the run's seed, the class shares, and the
generator probe), for run folders that owf.train did not write (finetune_entropy.py's RUN_OUT).

    python docs/results/likelihood/fid10k.py RUN [RUN ...]
"""
import json
import sys

import torch

from owf import load
from owf.tasks import make_task

torch.set_num_threads(1)
for run in sys.argv[1:]:
    m = load(run)
    ev = make_task(m.config, False).evaluate(m.G, 0, final=True)
    print(run, json.dumps({k: ev[k] for k in ("fid", "min_class_share", "class_shares", "probe_log_q")}))

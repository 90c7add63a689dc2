"""AIS's lower bound against the number of chains M at a fixed K (issue 29; docs/likelihood.md, "The
default's AIS at 4,096 chains"): does the CPU's 64-chain bound at K = 8,000 sit below what more chains at
a smaller K give, for the same or less compute?

    python docs/results/likelihood/chains_vs_k.py RUN OUT.json M:K [M:K ...] [--threads N]

Each M:K is one rung of owf.image_eval.likelihood_bracket (defensive base, 64 RAISE images, seed 0): the
same estimator as `owf.evaluate RUN --ais-bases defensive`, with M chains and K steps. Rows are saved as made."""
import argparse
import json
import time
from pathlib import Path

import torch

from owf.density import load
from owf.image_eval import likelihood_bracket
from owf.images import load_images

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("out")
ap.add_argument("rungs", nargs="+", help="M:K pairs")
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(args.threads)
model = load(args.run, "cpu")
test_u8, _ = load_images(model.config.data, model.config.data_root, train=False)
rows = []
for rung in args.rungs:
    M, K = map(int, rung.split(":"))
    t = time.time()
    r = likelihood_bracket(model, test_u8, ladder=(K,), bases=("defensive",), chains=M, raise_points=64,
                           progress=False, replicates=1)["ais_rows"][0]
    rows.append(dict(chains=M, K=K, chain_steps=M * K, wall_s=round(time.time() - t, 1),
                     **{k: r[k] for k in ("log_zeta", "se", "ess", "log_weight_var", "ais_bits_per_dim",
                                          "ais_bits_per_dim_subset", "raise_bits_per_dim")}))
    print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))

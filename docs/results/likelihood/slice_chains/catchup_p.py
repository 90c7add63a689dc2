"""A run's catch-up phase again, with G against P' (D's base weights π'_k ∝ π_k / ζ̂_k from a slice AIS line)
rather than P_D: copy RUN to OUT, set D's base_log_pi to log π', the checkpoint's step to cfg.steps (D is held in
the phase, so its state at the end is its state at cfg.steps; G restarts at p_0 there), drop later metrics rows.
    python docs/results/likelihood/slice_chains/catchup_p.py RUN SLICE.jsonl ROW OUT > OUT.json
    python -m owf.train --resume OUT --threads 1"""
import json, shutil, sys
from pathlib import Path
import torch
run, slice_path, row, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
shutil.copytree(run, out)
est = json.loads(open(slice_path).read().splitlines()[row])
s = torch.load(out / "checkpoint.pt", weights_only=False)
steps = s["config"]["steps"]
log_pi = s["D"]["base_log_pi"]
a = log_pi - torch.tensor(est["component_log_zetas"], dtype=torch.float64)
s["D"]["base_log_pi"] = torch.log_softmax(a, 0)
s["step"] = steps
torch.save(s, out / "checkpoint.pt")
rows = [l for l in open(out / "metrics.jsonl") if json.loads(l)["step"] <= steps]
open(out / "metrics.jsonl", "w").writelines(rows)
(out / "metrics.json").unlink(missing_ok=True)
print(json.dumps({"pi": log_pi.exp().tolist(), "pi_prime": s["D"]["base_log_pi"].exp().tolist(),
                  "log_zeta_prime": -float(torch.logsumexp(a, 0))}))

"""Pilot: train a config for --steps, then AIS (defensive base) test NLL, probe, FID. One line of JSON per run."""
import sys, json, time, math, subprocess, os, torch
name, steps = sys.argv[1], sys.argv[2]
extra = sys.argv[3:]
out = f"/work/runs/p29/{name}"
t = time.time()
if not os.path.exists(out + "/metrics.json"):
    subprocess.run([sys.executable, "-m", "owf.train", "--data", "fashion-mnist", "--steps", steps, "--threads", "1",
                    "--fid-every", "1000", "--fid-samples", "2000", "--out", out, "--overwrite", *extra],
                   check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
train_s = time.time() - t
torch.set_num_threads(1)
import owf
from owf.images import load_images
from owf.image_eval import dequantise
model = owf.load(out)
te, _ = load_images("fashion-mnist", train=False)
x = dequantise(te[:2000], torch.Generator().manual_seed(0))
e = torch.cat([model.energy(b.float()).double() for b in x.split(500)])
n = 784
bpd = lambda nll: (nll + n * math.log(128)) / (n * math.log(2))
res = {"name": name, "args": " ".join(extra), "train_s": round(train_s)}
for base in ("defensive",):
    ss = model.tune_ais(base, 1, pilot_steps=200, chains=64)
    for K in (500, 2000):
        est = model.estimate_log_zeta(64, "ais", steps=K, base=base, step_sizes=ss, generator=torch.Generator().manual_seed(1))
        res[f"ais_{base}_K{K}_logZ"] = round(est.log_zeta, 1)
        res[f"ais_{base}_K{K}_bpd"] = round(bpd(float(-(e - est.log_zeta).mean())), 3)
        res[f"ais_{base}_K{K}_ess"] = round(est.ess, 1)
    r = model.raise_log_prob(x[:32], 2000, 1, base, step_sizes=ss, generator=torch.Generator().manual_seed(2))
    res[f"raise_{base}_K2000_bpd32"] = round(bpd(float(-r.log_prob.mean())), 3)
    res[f"ais_{base}_K2000_bpd32"] = round(bpd(float(-(e[:32] - est.log_zeta).mean())), 3)
m = json.load(open(out + "/metrics.json"))
for k in ("fid", "min_class_share", "probe_log_q", "probe_logdet", "saturated", "ess"):
    if k in m: res[k] = round(m[k], 4)
res["E_test_mean"] = round(float(e.mean()), 1)
res["eval_s"] = round(time.time() - t - train_s)
print(json.dumps(res), flush=True)
with open("/work/runs/p29/summary.jsonl", "a") as f:
    f.write(json.dumps(res) + "\n")

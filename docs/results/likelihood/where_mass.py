"""Where is P_D's mass? AIS (64 chains, K transitions) from the defensive base, then, at the chains'
final states, at 256 dequantised test images and at 256 generator samples: the network's part of
D/w (f/w = D/w - log p_0) and the base's log p_0, and a picture of the 16 heaviest chains' ends
(top row) above 16 test images. Prints JSON; writes RUN_NAME_ais_end_KK.png in the working folder.
    python docs/results/likelihood/where_mass.py RUN K"""
import sys, math, torch, json
torch.set_num_threads(1)
import owf
from owf.ais import ais
from owf.images import load_images
from owf.image_eval import dequantise
import torchvision.utils as vu
run, K = sys.argv[1], int(sys.argv[2])
m = owf.load(run)
D = m.D
w = m.w
te, _ = load_images("fashion-mnist", train=False)
x = dequantise(te[:256], torch.Generator().manual_seed(0)).float()
g = torch.Generator().manual_seed(1)
ss = m.tune_ais("defensive", 1, pilot_steps=200, chains=64, generator=g)
path = m.ais_path("defensive", 1)
betas = ss.schedule(K, "sigmoid")
r = ais(path, 64, betas, ss, g)
from owf.ais import Box, coordinate_of      # the chains' coordinate: atanh, or a copula base's normal scores
xe = coordinate_of(m.ais_base("defensive"), Box(-1.0, 1.0)).to_x(r.u).view(-1, 1, 28, 28).float()
with torch.no_grad():
    y = m.sample(256, torch.Generator().manual_seed(2))
def parts(z):
    with torch.no_grad():
        full = D(z).double()
        lb = D.log_base(z)
        f = full - w * lb
    return f / w, lb
out = {}
for name, z in (("test", x), ("G", y), ("ais_end", xe)):
    if z is None: continue
    f, lb = parts(z)
    out[name] = dict(f_over_w=round(float(f.mean()), 1), f_sd=round(float(f.std()), 1), log_p0=round(float(lb.mean()), 1),
                     E=round(float((f + lb).mean()), 1), sat=round(float((z.abs() > 0.995).float().mean()), 3),
                     mean_pix=round(float(z.mean()), 3))
lw = r.log_w
top = lw.argsort(descending=True)[:16]
f, lb = parts(xe)
out["ais_top"] = [dict(log_w=round(float(lw[i]), 1), f=round(float(f[i]), 1), lp0=round(float(lb[i]), 1)) for i in top[:6]]
out["log_zeta"] = float(torch.logsumexp(lw, 0) - math.log(64))
print(json.dumps(out, indent=1))
vu.save_image(torch.cat([xe[top], x[:16]]) * 0.5 + 0.5, f"{run.rstrip('/').split('/')[-1]}_ais_end_K{K}.png", nrow=16)

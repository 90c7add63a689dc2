"""One Gaussian fitted to dequantised Fashion-MNIST in RealNVP's logit coordinate with a margin alpha,
u = logit(alpha + (1 - 2 alpha) y / 256), against alpha = 0 (atanh's, up to scale: AtanhGaussian's 4.234):
test bits/dim on the [0, 256) scale, the Jacobian of y -> u counted. With alpha > 0 the Gaussian's mass
outside u's interval is lost (a sub-normalised density: the bits/dim stay an upper bound).
    python docs/results/likelihood/logit_margins.py 0 1e-4 1e-3 0.01 0.05   (printed: logit_margins.txt)"""
import math, sys
import torch
from owf.images import load_images
from owf.baselines import GaussianBase
torch.set_num_threads(1)
tr = load_images("fashion-mnist", train=True)[0]
te = load_images("fashion-mnist", train=False)[0]
n = 784


def coords(u8, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(u8.shape, generator=g, dtype=torch.float64).clamp_min_(1e-12)
    t = (u8.double() + U).flatten(1)
    xp = alpha + (1 - 2 * alpha) * t / 256
    u = torch.log(xp) - torch.log1p(-xp)
    return u, (math.log((1 - 2 * alpha) / 256) - torch.log(xp) - torch.log1p(-xp)).sum(1)     # log|du/dt|


for alpha in [float(a) for a in sys.argv[1:]]:
    base = GaussianBase(coords(tr, alpha, 0)[0], 1e-3)
    ut, lj = coords(te, alpha, 1)
    lp = base.log_prob(ut) + lj
    print(f"alpha={alpha:g}: Gaussian test bits/dim {float(-lp.mean()) / (n * math.log(2)):.4f} "
          f"(+- {float(lp.std()) / math.sqrt(len(lp)) / (n * math.log(2)):.4f})", flush=True)

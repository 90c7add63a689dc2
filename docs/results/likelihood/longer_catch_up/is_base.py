"""Importance sampling of log ζ from the base p_0 itself (log-weights f/w, D's network part): the phase's
step 0, where G is p_0. python docs/results/likelihood/longer_catch_up/is_base.py RUN S"""
import sys

import torch

from owf import load

torch.set_num_threads(1)
m = load(sys.argv[1])
est = m.estimate_log_zeta(int(sys.argv[2]), "base", 1000, torch.Generator().manual_seed(5), progress=False,
                          keep_log_weights=True)
lw = est.log_weights.double()
print(f"IS from p_0, S={len(lw)}: log zeta {est.log_zeta:.1f}, ESS {est.ess:.2f}, "
      f"log-weights (f/w) {lw.mean():.1f} +- {lw.std():.1f}, max {lw.max():.1f}")

"""owf_kernels: fused forward + Jacobian-vector-product layers and the log-ζ reduction.

Two ops, each with a Triton kernel and a pure-PyTorch reference behind one call:

- `linear_jvp(x, x_dot, weight, bias=None, activation="identity", negative_slope=0.2) -> (y, y_dot)`
- `log_zeta(d, log_q, w=1.0) -> log((1/S) Σ exp(d/w - log_q))`, with its chunked partial form.

The backend is chosen per call from the tensors' device and `OWF_KERNELS_BACKEND`
(auto | triton | torch), see `owf_kernels.backend`. This package depends on torch (and, for the
kernels, triton) only; importing it compiles nothing and prints nothing.
"""
from .cpu_malloc import keep_freed_memory
from .linear_jvp import ACTIVATIONS, linear_jvp, linear_jvp_torch
from .log_zeta import (LogZetaAccumulator, combine_partials, log_zeta, log_zeta_partials,
                       log_zeta_partials_torch, log_zeta_torch, partials_to_estimate)

__all__ = ["ACTIVATIONS", "linear_jvp", "linear_jvp_torch", "log_zeta", "log_zeta_torch",
           "log_zeta_partials", "log_zeta_partials_torch", "combine_partials",
           "partials_to_estimate", "LogZetaAccumulator", "keep_freed_memory"]

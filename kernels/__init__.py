"""owf_kernels: fused forward + Jacobian-vector-product layers and the log-ζ reduction.

Two kernels, each a Triton implementation and a pure-PyTorch reference behind one call, and a
chain of the first:

- `linear_jvp(x, x_dot, weight, bias=None, activation="identity", negative_slope=0.2) -> (y, y_dot)`
- `mlp_jvp(x, x_dot, weights, biases, activation, last_activation)`: a stack of linear_jvp layers as
  one autograd node.
- `log_zeta(d, log_q, w=1.0) -> log((1/S) Σ exp(d/w - log_q))`, with its chunked partial form.

The backend is chosen per call from the tensors' device and `OWF_KERNELS_BACKEND`
(auto | triton | torch), see `owf_kernels.backend`. This package depends on torch (and, for the
kernels, triton) only; importing it compiles nothing and prints nothing.
"""
from .cpu_malloc import keep_freed_memory
from .linear_jvp import ACTIVATIONS, linear_jvp, linear_jvp_torch
from .mlp_jvp import mlp_jvp, mlp_jvp_torch
from .jvp import jvp
from .log_zeta import (LogZetaAccumulator, combine_partials, log_zeta, log_zeta_partials,
                       log_zeta_partials_torch, log_zeta_torch, partials_to_estimate)

__all__ = ["jvp", "ACTIVATIONS", "linear_jvp", "linear_jvp_torch", "mlp_jvp", "mlp_jvp_torch", "log_zeta", "log_zeta_torch",
           "log_zeta_partials", "log_zeta_partials_torch", "combine_partials",
           "partials_to_estimate", "LogZetaAccumulator", "keep_freed_memory"]

"""owf_kernels: fused forward + Jacobian-vector-product kernels, a JVP engine for whole networks, and
the log-ζ reduction.

- `jvp(func, primals, tangents, *, has_aux=False, tangent_grad=True, batch_norm="batch", compile=None)`:
  a drop-in for torch.func.jvp on any module or callable, T tangents in one primal pass: traced to
  ATen once per signature (jvp_trace), one stacked rule per op (jvp_rules*), run by jvp_runner with
  today's layer patterns as fusion rules, or compiled by Inductor as one graph (jvp_compiled).
- `linear_jvp(x, x_dot, weight, bias=None, activation="identity", negative_slope=0.2) -> (y, y_dot)`
- `mlp_jvp(x, x_dot, weights, biases, activation, last_activation)`: a stack of linear_jvp layers as
  one autograd node.
- `sdpa_jvp(q, k, v, q_dot, k_dot, v_dot, attn_mask=None, is_causal=False, scale=None) -> (o, o_dot)`:
  attention and its tangents (a flash-attention JVP kernel on CUDA); jvp's rule for SDPA.
- `log_zeta(d, log_q, w=1.0) -> log((1/S) Σ exp(d/w - log_q))`, with its chunked partial form.

The backend is chosen per call from the tensors' device and `OWF_KERNELS_BACKEND`
(auto | triton | torch), see `owf_kernels.backend`. This package depends on torch (and, for the
kernels, triton) only; importing it compiles nothing and prints nothing.
"""
from .cpu_malloc import keep_freed_memory
from .linear_jvp import ACTIVATIONS, linear_jvp, linear_jvp_torch
from .mlp_jvp import mlp_jvp, mlp_jvp_torch
from .attention_jvp import sdpa_jvp, sdpa_jvp_torch
from .jvp import clear_cache, jvp
from .log_zeta import (LogZetaAccumulator, combine_partials, log_zeta, log_zeta_partials,
                       log_zeta_partials_torch, log_zeta_torch, partials_to_estimate)

__all__ = ["jvp", "clear_cache", "sdpa_jvp", "sdpa_jvp_torch", "ACTIVATIONS", "linear_jvp", "linear_jvp_torch", "mlp_jvp", "mlp_jvp_torch", "log_zeta", "log_zeta_torch",
           "log_zeta_partials", "log_zeta_partials_torch", "combine_partials",
           "partials_to_estimate", "LogZetaAccumulator", "keep_freed_memory"]

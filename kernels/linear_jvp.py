"""linear_jvp: a linear layer and its Jacobian-vector products (tangents) in one pass.

    a      = x Wᵀ + b                      x: [M, K], W: [N, K], b: [N]      -> a: [M, N]
    a_dot  = x_dot[t] Wᵀ                   x_dot: [T, M, K]                  -> a_dot: [T, M, N]
    y      = σ(a)
    y_dot  = σ'(a) ⊙ a_dot[t]              (forward-mode chain rule, one tangent per t)

Backward, given gy = ∂L/∂y [M, N] and gyd = ∂L/∂y_dot [T, M, N]:

    g_a     = gy ⊙ σ'(a) + σ''(a) ⊙ Σ_t gyd[t] ⊙ a_dot[t]       (σ'' term: the loss sees y_dot)
    g_adot  = gyd[t] ⊙ σ'(a)
    gx      = g_a W,      gx_dot[t] = g_adot[t] W
    gW      = g_aᵀ x + Σ_t g_adot[t]ᵀ x_dot[t]
    gb      = Σ_m g_a

Both σ'(a) and σ''(a) ⊙ a_dot are written in terms of the *outputs* y, y_dot for every monotone
activation (see `_grad_preact`), so backward needs no pre-activation tensor: forward saves only
its inputs and outputs (the torch path also keeps tanh's σ' = 1 - y², which its forward forms
anyway, saving backward a pass). silu is not invertible from y; its backward recomputes a and a_dot
(the torch path keeps them, a by-product of its forward).

Two implementations share this contract:
- `linear_jvp_torch`: the pure-PyTorch reference. It is the CPU path and the test oracle. It runs
  primal and tangents as one GEMM over a stacked [1+T, M, K] operand (W read once for all 1+T
  products) and has a hand-written backward of three GEMMs and a few elementwise passes.
- the Triton kernel in `linear_jvp_triton.py`: one launch for y and all T tangents.
`linear_jvp` picks one with a single `if` (see backend.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import use_triton

ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus", "silu")


# ---------------------------------------------------------------------------------------------
# Validation and layout
# ---------------------------------------------------------------------------------------------
def check_inputs(x, x_dot, weight, bias, activation, negative_slope):
    """Raise ValueError naming the bad value; return (lead_shape, M, K, N, T)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not supported; choose one of {ACTIVATIONS}")
    if activation == "leaky_relu" and not negative_slope >= 0:
        raise ValueError(f"negative_slope={negative_slope!r} must be >= 0")
    for name, t in (("x", x), ("x_dot", x_dot), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [N, K], got shape {tuple(weight.shape)}")
    N, K = weight.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"x shape {tuple(x.shape)} does not end in K={K} (weight {tuple(weight.shape)})")
    if x_dot.dim() != x.dim() + 1 or x_dot.shape[1:] != x.shape or x_dot.shape[0] < 1:
        raise ValueError(f"x_dot must be [T, *x.shape] with T >= 1: got x_dot {tuple(x_dot.shape)} "
                         f"for x {tuple(x.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != N):
        raise ValueError(f"bias must be [N={N}], got shape {tuple(bias.shape)}")
    tensors = [("x", x), ("x_dot", x_dot), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    devices = {t.device for _, t in tensors}
    if len(devices) != 1:
        raise ValueError("all inputs must be on one device, got " +
                         ", ".join(f"{n} on {t.device}" for n, t in tensors))
    dtypes = {t.dtype for _, t in tensors}
    if len(dtypes) != 1:
        raise ValueError("all inputs must share one dtype, got " +
                         ", ".join(f"{n} {t.dtype}" for n, t in tensors))
    lead = tuple(x.shape[:-1])
    M = 1
    for s in lead:
        M *= s
    return lead, M, K, N, x_dot.shape[0]


def stack_primal_tangents(x: torch.Tensor, x_dot: torch.Tensor) -> torch.Tensor:
    """[M, K] and [T, M, K] -> [1+T, M, K], without a copy when x_dot directly follows x in memory
    (as it does when both are views of one stacked buffer, e.g. the outputs of the previous layer)."""
    T, M, K = x_dot.shape
    if (x.is_contiguous() and x_dot.is_contiguous() and x.dtype == x_dot.dtype
            and x.untyped_storage().data_ptr() == x_dot.untyped_storage().data_ptr()
            and x_dot.data_ptr() == x.data_ptr() + x.numel() * x.element_size()):
        return x.as_strided((1 + T, M, K), (M * K, K, 1))
    return torch.cat([x.reshape(1, M, K), x_dot], 0)


# ---------------------------------------------------------------------------------------------
# Activation math, shared by the reference and (formula for formula) by the Triton epilogue
# ---------------------------------------------------------------------------------------------
def act_and_slope(a: torch.Tensor, activation: str, negative_slope: float):
    """y = σ(a) and σ'(a)."""
    if activation == "identity":
        return a, torch.ones_like(a)
    if activation == "relu":
        return torch.relu(a), (a > 0).to(a.dtype)
    if activation == "leaky_relu":
        pos = a > 0
        return torch.where(pos, a, a * negative_slope), torch.where(pos, 1.0, negative_slope).to(a.dtype)
    if activation == "tanh":
        y = _tanh_(a.clone())
        return y, 1 - y * y
    if activation == "sigmoid":
        y = torch.sigmoid(a)
        return y, y * (1 - y)
    if activation == "softplus":
        # log(1 + e^a) = max(a, 0) + log1p(e^-|a|); σ' = sigmoid(a)
        return torch.clamp_min(a, 0) + torch.log1p(torch.exp(-a.abs())), torch.sigmoid(a)
    if activation == "silu":
        s = torch.sigmoid(a)
        return a * s, s * (1 + a * (1 - s))
    raise ValueError(f"activation={activation!r} is not supported; choose one of {ACTIVATIONS}")


def _grad_preact(G, out, activation, negative_slope, A=None):
    """From G = [gy; gyd] and out = [y; y_dot] (both [1+T, M, N]) to GA = [g_a; g_adot].

        g_adot[t] = gyd[t] ⊙ σ'(a)
        g_a       = gy ⊙ σ'(a) + Σ_t gyd[t] ⊙ (σ''(a) ⊙ a_dot[t])

    In terms of outputs (σ'' a_dot is what y_dot carries, scaled):
        tanh:     σ' = 1 - y²,        σ'' a_dot = -2 y ⊙ y_dot
        sigmoid:  σ' = y (1 - y),     σ'' a_dot = (1 - 2y) ⊙ y_dot
        softplus: σ' = 1 - e^-y,      σ'' a_dot = e^-y ⊙ y_dot
        relu, leaky_relu, identity: σ' from the sign of y (slope ≥ 0), σ'' = 0
        tanh:     A is σ' = 1 - y² [M, N], which the torch forward forms anyway and keeps.
        silu:     not invertible: uses the pre-activations A = [a; a_dot] (kept by the torch path,
                  where they are a by-product; recomputed by the Triton backward),
                  σ' = s (1 + a (1 - s)), σ'' = s (1 - s) (2 + a (1 - 2s)), s = sigmoid(a).
    """
    y, yd = out[0], out[1:]
    if activation == "identity":
        return G
    if activation in ("relu", "leaky_relu"):
        slope = 0.0 if activation == "relu" else negative_slope
        return G * torch.where(y > 0, 1.0, slope).to(G.dtype)
    if activation == "silu":
        a, ad = A[0], A[1:]
        s = torch.sigmoid(a)
        d1 = s * (1 + a * (1 - s))
        d2 = s * (1 - s) * (2 + a * (1 - 2 * s))
        GA = G * d1
        GA[0] += d2 * (G[1:] * ad).sum(0)
        return GA
    if activation == "tanh":
        GA = G * A                                                       # G σ', σ' = 1 - y² (A, from forward)
        GA[0].addcmul_(_sum_products(G[1:], yd), y, value=-2)            # + Σ_t gyd[t] (-2 y y_dot[t])
        return GA
    if activation == "sigmoid":
        d1, c = y * (1 - y), 1 - 2 * y
    elif activation == "softplus":
        c = torch.exp(-y)
        d1 = -torch.expm1(-y)
    else:
        raise ValueError(f"activation={activation!r} is not supported; choose one of {ACTIVATIONS}")
    GA = G * d1
    GA[0].addcmul_(c, _sum_products(G[1:], yd))
    return GA


def _sum_products(a, b):
    """Σ_t a[t] ⊙ b[t] for [T, M, N] operands -> [M, N], accumulated in place: no [T, M, N]
    temporary and no separate reduction pass (T is small: 1 for jvp1, n for an exact log-det)."""
    acc = a[0] * b[0]
    for t in range(1, a.shape[0]):
        acc.addcmul_(a[t], b[t])
    return acc


# ---------------------------------------------------------------------------------------------
# The pure-PyTorch reference (CPU path and oracle)
# ---------------------------------------------------------------------------------------------
def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, computed as (bᵀ aᵀ)ᵀ when the result has very few columns: BLAS (MKL here) is up to
    3x slower on a [768, 2] output than on its [2, 768] transpose."""
    if b.shape[1] <= 4 < a.shape[0]:
        return (b.t() @ a.t()).t().contiguous()   # small copy; keeps gradients in the parameter's layout
    return a @ b


def _forward_torch(h, weight, bias, activation, negative_slope):
    """[1+T, M, K] -> (out = [y; y_dot] [1+T, M, N], computed in place in the GEMM's output;
    σ' = 1 - y² [M, N] for tanh, which backward reuses, else None)."""
    # A = [a; a_dot] = h Wᵀ: one GEMM over (1+T)·M rows, W read once    # read (1+T)MK + NK, write (1+T)MN
    T1, M, K = h.shape                                        # _mm: (W hᵀ)ᵀ for the last layer's N = n
    A = _mm(h.reshape(T1 * M, K), weight.t()).view(T1, M, weight.shape[0])
    a, ad = A[0], A[1:]
    if bias is not None:
        a += bias
    if activation == "identity":
        return A, None
    if activation == "tanh":
        d1 = _tanh_slope_(a)                                    # y = tanh a in place; σ' = 1 - y²
        ad.mul_(d1)                                             # y_dot = σ' a_dot
        return A, d1
    y, d1 = act_and_slope(a, activation, negative_slope)     # read MN, write 2MN
    ad.mul_(d1)                                                 # y_dot = σ'(a) a_dot
    a.copy_(y)
    return A, None


def _tanh_(a):
    """tanh in place as 2 sigmoid(2a) - 1, the Triton epilogue's formula (Triton's interpreter has
    no tanh), so that both paths round alike: with torch.tanh_ instead (1 pass, 28 us on [512, 256]
    against 78 us for four passes) a short training run on the two backends drifted apart by 1.7e-5
    in energy, past tests/test_train.py's tolerance. Three passes: 2a, sigmoid, then -1 + 2s in one
    (2s is exact, so the result is bitwise that of 2 * s - 1)."""
    s = a.mul_(2).sigmoid_()
    return torch.add(_scalar(-1.0, a), s, alpha=2, out=a)


def _tanh_slope_(a):
    """a <- tanh a in place; returns σ' = 1 - y² (a new [M, N] tensor)."""
    return torch.addcmul(_scalar(1.0, a), _tanh_(a), a, value=-1)


_SCALARS: dict = {}


def _scalar(value: float, t: torch.Tensor) -> torch.Tensor:
    """A cached 0-dim tensor of `value` in t's dtype and device: torch.addcmul and torch.add want a
    tensor first operand, and making one costs more than the op on small inputs."""
    key = (value, t.dtype, t.device)
    c = _SCALARS.get(key)
    if c is None:
        c = _SCALARS[key] = torch.full((), value, dtype=t.dtype, device=t.device)
    return c


def _forward_const_tangents(x, x_dot, weight, bias, activation, negative_slope):
    """x_dot constant over the batch (stride 0, e.g. the identity tangents of an exact log-det):
    a_dot[t] = x_dot[t, 0] Wᵀ is one row, broadcast over M, instead of a GEMM over T·M rows."""
    T, M, K = x_dot.shape
    N = weight.shape[0]
    out = torch.empty((1 + T, M, N), dtype=x.dtype, device=x.device)
    a = out[0]                                                      # a, then y, in place: [M, N]
    if bias is None:
        torch.mm(x, weight.t(), out=a)
    else:
        torch.addmm(bias, x, weight.t(), out=a)
    ad = F.linear(x_dot[:, 0], weight)                              # [T, N]
    pre = torch.cat([a[None], ad[:, None, :].expand(T, M, -1)]) if activation == "silu" else None
    if activation == "tanh":
        d1 = pre = _tanh_slope_(a)                                  # y = tanh a in place; σ' kept for backward
    else:
        y, d1 = act_and_slope(a, activation, negative_slope)
        a.copy_(y)
    torch.mul(d1, ad[:, None, :], out=out[1:])                      # y_dot[t] = σ'(a) ⊙ a_dot[t]
    return out, pre


class _LinearJVPTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_dot, weight, bias, activation, negative_slope):
        T, M, K = x_dot.shape
        ctx.const = M > 1 and x_dot.stride(1) == 0
        if ctx.const:
            out, pre = _forward_const_tangents(x, x_dot, weight, bias, activation, negative_slope)
            h = None
        else:
            h = stack_primal_tangents(x, x_dot)                             # [1+T, M, K]
            if activation == "silu":
                # silu is not invertible from y: keep the pre-activations (a free by-product here)
                pre = F.linear(h, weight)
                if bias is not None:
                    pre[0] += bias
                y, d1 = act_and_slope(pre[0], activation, negative_slope)
                out = torch.cat([y.unsqueeze(0), pre[1:] * d1], 0)
            else:
                out, pre = _forward_torch(h, weight, bias, activation, negative_slope)   # [1+T, M, N]
        # Saved: the inputs (needed for gx, gW anyway) and the outputs, from which σ' and σ'' a_dot
        # follow; `pre` is the pre-activations for silu, σ' = 1 - y² for tanh (formed by forward
        # anyway: saves backward a pass), else None.
        ctx.save_for_backward(x, x_dot, h, weight, bias, out, pre)
        ctx.activation, ctx.negative_slope = activation, negative_slope
        return out[0], out[1:]

    @staticmethod
    def backward(ctx, gy, gyd):
        x, x_dot, h, weight, bias, out, pre = ctx.saved_tensors
        T1, M, N = out.shape
        K = weight.shape[1]
        G = stack_primal_tangents(gy, gyd)                                 # [1+T, M, N]
        GA = _grad_preact(G, out, ctx.activation, ctx.negative_slope, pre)  # [1+T, M, N]
        gx = gxd = gw = gb = None
        GA2 = GA.reshape(T1 * M, N)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gh = (GA2 @ weight).view(T1, M, K)                              # [gx; gx_dot] = GA W
            gx, gxd = gh[0], gh[1:]
        if ctx.needs_input_grad[2]:
            if ctx.const:   # gW = g_aᵀ x + Σ_t (Σ_m g_adot[t, m])ᵀ x_dot[t, 0]
                gw = _mm(GA[0].t(), x) + GA[1:].sum(1).t() @ x_dot[:, 0]
            else:           # gW = GAᵀ [x; x_dot]
                gw = _mm(GA2.t(), h.reshape(T1 * M, K))
        if bias is not None and ctx.needs_input_grad[3]:
            gb = GA[0].sum(0)                                               # gb = Σ_m g_a
        return gx, gxd, gw, gb, None, None


def apply_layer(fn, x, x_dot, weight, bias, activation, negative_slope):
    """Validate, flatten to [M, K] / [T, M, K], run the autograd Function `fn`, restore the leading
    dims. Shared by the torch and Triton paths."""
    lead, M, K, N, T = check_inputs(x, x_dot, weight, bias, activation, negative_slope)
    if x.dim() == 2:       # no reshape/view autograd nodes when there is nothing to reshape
        return fn.apply(x, x_dot, weight, bias, activation, float(negative_slope))
    y, yd = fn.apply(x.reshape(M, K), x_dot.reshape(T, M, K), weight, bias, activation, float(negative_slope))
    return y.view(*lead, N), yd.view(T, *lead, N)


def linear_jvp_torch(x, x_dot, weight, bias=None, activation="identity", negative_slope=0.2):
    """The pure-PyTorch reference; same contract as `linear_jvp`."""
    return apply_layer(_LinearJVPTorch, x, x_dot, weight, bias, activation, negative_slope)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def linear_jvp(x, x_dot, weight, bias=None, activation="identity", negative_slope=0.2):
    """y = act(x Wᵀ + b) and its tangents y_dot[t] = act'(a) ⊙ (x_dot[t] Wᵀ), differentiable in
    x, x_dot, weight and bias (including the act'' terms).

    x: [..., K]; x_dot: [T, ..., K]; weight: [N, K] as in nn.Linear; bias: [N] or None.
    Returns y: [..., N] and y_dot: [T, ..., N]. Triton on CUDA, the torch reference on CPU
    (see backend.py for OWF_KERNELS_BACKEND).
    """
    if use_triton(x):
        from .linear_jvp_triton import linear_jvp_triton
        return linear_jvp_triton(x, x_dot, weight, bias, activation, negative_slope)
    return linear_jvp_torch(x, x_dot, weight, bias, activation, negative_slope)

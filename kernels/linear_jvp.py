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
activation (see `_slope_curvature`), so backward needs no pre-activation tensor: forward saves only
its inputs and outputs (the torch path also keeps tanh's σ' = 1 - y², which its forward forms
anyway, saving backward a pass). silu is not invertible from y; its backward recomputes a and a_dot
(the torch path keeps them, a by-product of its forward).

Two implementations share this contract:
- `linear_jvp_torch`: the pure-PyTorch reference. It is the CPU path and the test oracle. Its
  forward writes a and a_dot into one [1+T, M, N] buffer with no stacked copy of x and x_dot (one
  GEMM when they are stacked in memory already, else two; see `_forward_torch`), its hand-written
  backward takes GA W and GAᵀ [x; x_dot] as GEMMs around a few elementwise passes
  (`backward_layer`). `forward_layer` / `backward_layer` are also the layers of `mlp_jvp`'s single
  autograd node.
- the Triton kernel in `linear_jvp_triton.py`: one launch for y and all T tangents.
`linear_jvp` picks one with a single `if` (see backend.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import first_order, use_triton_dot

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


def stacked_view(x: torch.Tensor, x_dot: torch.Tensor):
    """[x; x_dot] as one [1+T, M, K] view when x_dot directly follows x in memory (as it does when
    both are views of one stacked buffer, e.g. the outputs of the previous layer), else None."""
    T, M, K = x_dot.shape
    if (x.is_contiguous() and x_dot.is_contiguous() and x.dtype == x_dot.dtype
            and x.untyped_storage().data_ptr() == x_dot.untyped_storage().data_ptr()
            and x_dot.data_ptr() == x.data_ptr() + x.numel() * x.element_size()):
        return x.as_strided((1 + T, M, K), (M * K, K, 1))
    return None


def stack_primal_tangents(x: torch.Tensor, x_dot: torch.Tensor) -> torch.Tensor:
    """[M, K] and [T, M, K] -> [1+T, M, K], without a copy when they are already stacked in memory."""
    h = stacked_view(x, x_dot)
    return h if h is not None else torch.cat([x.reshape(1, *x.shape), x_dot], 0)


def const_tangents(x_dot: torch.Tensor) -> bool:
    """x_dot [T, M, K] constant over the batch (stride 0, e.g. the identity tangents of an exact log-det)."""
    return x_dot.shape[1] > 1 and x_dot.stride(1) == 0


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
        return torch.where(pos, a, a * negative_slope), torch.where(pos, _scalar(1.0, a), negative_slope)
    if activation == "tanh":
        y = a * 2
        return y, _tanh_from_2a_(y)                      # y = tanh a in place of 2a; σ' = 1 - y²
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


def _grad_preact(gy, gyd, out, activation, negative_slope, A=None):
    """From gy [M, N], gyd [T, M, N] and out = [y; y_dot] [1+T, M, N] to GA = [g_a; g_adot]
    [1+T, M, N], a new buffer (for identity GA = [gy; gyd]: backward_layer uses them as they are):

        g_adot[t] = gyd[t] ⊙ σ'(a)
        g_a       = gy ⊙ σ'(a) + Σ_t gyd[t] ⊙ (σ''(a) ⊙ a_dot[t])

    σ' and σ'' a_dot from the outputs: see `_slope_curvature`. silu is not invertible: it uses the
    pre-activations A = [a; a_dot] (kept by the torch path, where they are a by-product; recomputed
    by the Triton backward), σ' = s (1 + a (1 - s)), σ'' = s (1 - s) (2 + a (1 - 2s)), s = sigmoid(a).
    """
    GA = torch.empty((1 + gyd.shape[0], *gy.shape), dtype=gy.dtype, device=gy.device)
    if activation == "silu":
        a, ad = A[0], A[1:]
        s = torch.sigmoid(a)
        d1 = s * (1 + a * (1 - s))
        d2 = s * (1 - s) * (2 + a * (1 - 2 * s))
        torch.mul(gy, d1, out=GA[0])
        torch.mul(gyd, d1, out=GA[1:])
        GA[0].add_(d2 * (gyd * ad).sum(0))
        return GA
    d1, c, k = _slope_curvature(out[0], activation, negative_slope, A)
    torch.mul(gy, d1, out=GA[0])                                        # gy σ'
    torch.mul(gyd, d1, out=GA[1:])                                      # g_adot = gyd σ'
    if c is not None:
        GA[0].addcmul_(c, _sum_products(gyd, out[1:]), value=k)         # + k c ⊙ Σ_t gyd[t] ⊙ y_dot[t]
    return GA


def _slope_curvature(y, activation, negative_slope, A=None):
    """(σ'(a), c, k) from the outputs, with σ''(a) ⊙ a_dot = k c ⊙ y_dot (c None where σ'' = 0):
        tanh:     σ' = 1 - y²  (A: kept by forward),  c = y,       k = -2
        sigmoid:  σ' = y (1 - y),                     c = 1 - 2y,  k = 1
        softplus: σ' = 1 - e^-y,                      c = e^-y,    k = 1
        relu, leaky_relu: σ' from the sign of y (slope ≥ 0), σ'' = 0.   identity: σ' = 1."""
    if activation == "identity":
        return torch.ones_like(y), None, 0.0
    if activation in ("relu", "leaky_relu"):
        slope = 0.0 if activation == "relu" else negative_slope
        return torch.where(y > 0, _scalar(1.0, y), slope), None, 0.0   # in y's dtype (a float slope would be fp32)
    if activation == "tanh":
        return A, y, -2.0
    if activation == "sigmoid":
        return y * (1 - y), 1 - 2 * y, 1.0
    if activation == "softplus":
        return -torch.expm1(-y), torch.exp(-y), 1.0
    raise ValueError(f"activation={activation!r} is not supported; choose one of {ACTIVATIONS}")


def _grads_const_tangents(gy, gyd, out, x, x_dot, weight, activation, negative_slope, pre):
    """gW and g_a for batch-constant tangents x_dot[t] = (row r_t, broadcast over M) when no input
    gradient is wanted (the first layer of an exact log-det). There y_dot[t] = σ' ⊙ ad_t with
    ad_t = r_t Wᵀ a row, so with σ'' a_dot = k c ⊙ y_dot (see `_slope_curvature`):

        g_a             = σ' ⊙ (gy + k c ⊙ Σ_t gyd[t] ⊙ ad_t)          [M, N]
        Σ_m g_adot[t]   = Σ_m gyd[t] ⊙ σ'                             [T, N]
        gW              = g_aᵀ x + Σ_t (Σ_m g_adot[t])ᵀ r_t

    without forming g_adot [T, M, N] (_grad_preact's GA), which only its column sums need."""
    d1, c, k = _slope_curvature(out[0], activation, negative_slope, pre)
    if c is None:
        ga = gy * d1
    else:
        ad = F.linear(x_dot[:, 0], weight)                              # [T, N]: ad_t
        q = gyd[0] * ad[0]
        for t in range(1, ad.shape[0]):
            q.addcmul_(gyd[t], ad[t])                                   # Σ_t gyd[t] ⊙ ad_t
        ga = torch.addcmul(gy, c, q, value=k, out=q).mul_(d1)
    colsums = (gyd * d1).sum(1)                                         # Σ_m g_adot[t]  [T, N]
    gw = _mm(ga.t(), x) + colsums.t() @ x_dot[:, 0]
    return gw, ga


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


def _forward_torch(x, x_dot, h, weight, bias, activation, negative_slope):
    """x [M, K], x_dot [T, M, K], h = stacked_view(x, x_dot) -> (out = [y; y_dot] [1+T, M, N], computed in place in the GEMMs'
    output; pre: σ' = 1 - y² [M, N] for tanh, which backward reuses; the pre-activations
    [a; a_dot] for silu, which is not invertible from y; else None).

    [a; a_dot] = [x; x_dot] Wᵀ (+ b on the primal rows) is one GEMM over (1+T)·M rows when x and
    x_dot are stacked in memory already (the previous layer's outputs are), or when the output is
    tiny (the last layer of a 2D flow: one GEMM as (W hᵀ)ᵀ, see _mm, after a small stacking copy).
    Otherwise it is two GEMMs (M and T·M rows) into one [1+T, M, N] buffer, with no stacked copy of
    the inputs; the primal's GEMM then adds the bias. For tanh both give 2a directly (see
    _tanh_from_2a_). Against two GEMMs for stacked inputs too (12-01, shuffled rounds in one
    process): the 2D generator step 1.005x, the 784-wide jvp1 step 1.014x faster.
    """
    T, M, K = x_dot.shape
    N = weight.shape[0]
    scale = 2.0 if activation == "tanh" else 1.0
    if h is not None or N <= 4 < M:
        h = h if h is not None else stack_primal_tangents(x, x_dot)
        A = _mm(h.reshape((1 + T) * M, K), weight.t()).view(1 + T, M, N)
        if bias is not None:        # a <- s (a + b) in one pass: s·b + s·a, exact scalings, one rounding
            torch.add(bias if scale == 1.0 else bias * scale, A[0], alpha=scale, out=A[0])
        elif scale != 1.0:
            A[0].mul_(scale)
    else:
        A = torch.empty((1 + T, M, N), dtype=x.dtype, device=x.device)
        _linear_into(x, weight, bias, A[0], scale)                                # 2a for tanh, else a
        torch.mm(x_dot.reshape(T * M, K), weight.t(), out=A[1:].view(T * M, N))  # a_dot
    a, ad = A[0], A[1:]
    if activation == "identity":
        return A, None
    if activation == "tanh":
        d1 = _tanh_from_2a_(a)                                                  # y in place; σ' = 1 - y²
        ad.mul_(d1)                                                             # y_dot = σ' a_dot
        return A, d1
    pre = A.clone() if activation == "silu" else None
    y, d1 = act_and_slope(a, activation, negative_slope)                        # read MN, write 2MN
    ad.mul_(d1)                                                                 # y_dot = σ'(a) a_dot
    a.copy_(y)
    return A, pre


def _linear_into(x, weight, bias, out, scale=1.0):
    """out <- scale (x Wᵀ + b) in one BLAS call (alpha = beta = scale; without a bias, beta = 0).
    scale = 2 gives tanh's 2a: scaling by 2 is exact, so it is bitwise 2 (x Wᵀ + b)."""
    if bias is None:
        return torch.addmm(out, x, weight.t(), beta=0, alpha=scale, out=out)
    return torch.addmm(bias, x, weight.t(), beta=scale, alpha=scale, out=out)


def _tanh_from_2a_(a2):
    """a2 = 2a -> y = tanh a = 2 sigmoid(2a) - 1 in place, in two passes (sigmoid, then -1 + 2s in
    one: 2s is exact, so the result is bitwise that of 2 * s - 1); returns σ' = 1 - y² (a new tensor).
    This is the Triton epilogue's formula (Triton's interpreter has no tanh), so that both paths
    round alike: with torch.tanh_ instead (1 pass, 28 us on [512, 256] against 78 us for four passes)
    a short training run on the two backends drifted apart by 1.7e-5 in energy, past
    tests/test_train.py's tolerance."""
    s = a2.sigmoid_()
    y = torch.add(_scalar(-1.0, s), s, alpha=2, out=s)
    return torch.addcmul(_scalar(1.0, y), y, y, value=-1)


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
    ad = F.linear(x_dot[:, 0], weight)                              # [T, N]
    _linear_into(x, weight, bias, a, 2.0 if activation == "tanh" else 1.0)   # 2a for tanh, else a
    if activation == "tanh":
        d1 = pre = _tanh_from_2a_(a)                                # y = tanh a in place; σ' kept for backward
    else:
        pre = torch.cat([a[None], ad[:, None, :].expand(T, M, -1)]) if activation == "silu" else None
        y, d1 = act_and_slope(a, activation, negative_slope)
        a.copy_(y)
    torch.mul(d1, ad[:, None, :], out=out[1:])                      # y_dot[t] = σ'(a) ⊙ a_dot[t]
    return out, pre


def forward_layer(x, x_dot, weight, bias, activation, negative_slope):
    """The torch path's forward of one layer, x [M, K], x_dot [T, M, K] -> (out = [y; y_dot]
    [1+T, M, N], saved), where `saved` = (x, x_dot, h, pre) is what `backward_layer` needs besides
    weight, bias and out: the inputs (for gx, gW anyway); h = [x; x_dot] when they are stacked in
    memory already (gW is then one GEMM), else None; and `pre` (see _forward_torch). From the
    outputs follow σ' and σ'' a_dot."""
    if const_tangents(x_dot):
        out, pre = _forward_const_tangents(x, x_dot, weight, bias, activation, negative_slope)
        return out, (x, x_dot, None, pre)
    h = stacked_view(x, x_dot)
    out, pre = _forward_torch(x, x_dot, h, weight, bias, activation, negative_slope)   # [1+T, M, N]
    return out, (x, x_dot, h, pre)


def backward_layer(gy, gyd, saved, weight, bias, out, activation, negative_slope, needs=(True, True, True)):
    """The torch path's backward of one layer: gy [M, N], gyd [T, M, N] -> (gh = [gx; gx_dot]
    [1+T, M, K] or None, gW or None, gb or None), for needs = (input grads, gW, gb). GA = [g_a;
    g_adot] is one buffer (see _grad_preact; for identity GA = [gy; gyd], which may be two), so
    [gx; gx_dot] = GA W is one GEMM; gW = GAᵀ [x; x_dot] is one GEMM when the inputs are stacked in
    memory, else two (g_aᵀ x + g_adotᵀ x_dot). No [1+T, ...] stacking copy of any operand."""
    x, x_dot, h, pre = saved
    T, M, N = gyd.shape
    K = weight.shape[1]
    const = const_tangents(x_dot)
    if const and not needs[0] and activation != "silu":
        gw, ga = _grads_const_tangents(gy, gyd, out, x, x_dot, weight, activation, negative_slope, pre)
        gb = ga.sum(0) if bias is not None and needs[2] else None      # gb = Σ_m g_a
        return None, (gw if needs[1] else None), gb
    if activation == "identity":        # GA = G: one buffer if gy, gyd are stacked already, else two
        GA, ga, gad = stacked_view(gy, gyd), gy, gyd
    else:
        GA = _grad_preact(gy, gyd, out, activation, negative_slope, pre)   # [1+T, M, N]
        ga, gad = GA[0], GA[1:]
    gh = gw = gb = None
    if needs[0]:
        if GA is not None:      # [gx; gx_dot] = GA W, one GEMM
            gh = (GA.reshape((1 + T) * M, N) @ weight).view(1 + T, M, K)
        else:                   # the same as two GEMMs into one buffer
            gh = torch.empty((1 + T, M, K), dtype=gy.dtype, device=gy.device)
            torch.mm(ga, weight, out=gh[0])
            torch.mm(gad.reshape(T * M, N), weight, out=gh[1:].view(T * M, K))
    if needs[1]:
        if const:               # batch-constant tangents: gW = g_aᵀ x + Σ_t (Σ_m g_adot[t, m])ᵀ x_dot[t, 0]
            gw = _mm(ga.t(), x) + gad.sum(1).t() @ x_dot[:, 0]
        elif GA is not None and h is not None:      # gW = GAᵀ [x; x_dot], one GEMM over the stacked rows
            gw = _mm(GA.reshape((1 + T) * M, N).t(), h.reshape((1 + T) * M, K))
        else:                   # the same as two GEMMs, g_aᵀ x + g_adotᵀ x_dot
            gw = _mm(ga.t(), x).addmm_(gad.reshape(T * M, N).t(), x_dot.reshape(T * M, K))
    if bias is not None and needs[2]:
        gb = ga.sum(0)                                                  # gb = Σ_m g_a
    return gh, gw, gb


class _LinearJVPTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_dot, weight, bias, activation, negative_slope):
        out, saved = forward_layer(x, x_dot, weight, bias, activation, negative_slope)
        ctx.save_for_backward(*saved, weight, bias, out)
        ctx.activation, ctx.negative_slope = activation, negative_slope
        return out[0], out[1:]

    @staticmethod
    @first_order       # a create_graph=True backward through it raises, see tests
    def backward(ctx, gy, gyd):
        *saved, weight, bias, out = ctx.saved_tensors
        n = ctx.needs_input_grad
        gh, gw, gb = backward_layer(gy, gyd, saved, weight, bias, out, ctx.activation, ctx.negative_slope,
                                    (n[0] or n[1], n[2], n[3]))
        gx, gxd = (None, None) if gh is None else (gh[0], gh[1:])
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
    if use_triton_dot(x):
        from .linear_jvp_triton import linear_jvp_triton
        return linear_jvp_triton(x, x_dot, weight, bias, activation, negative_slope)
    return linear_jvp_torch(x, x_dot, weight, bias, activation, negative_slope)

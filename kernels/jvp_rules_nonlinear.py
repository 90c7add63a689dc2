"""Nonlinear rules of owf_kernels.jvp (stage 2, jvp_rules.py has the table and the formulas): y by
the op itself (the plain forward's numbers and backward), ẏ by its tangent formula on the pair
(x, ẋ), under no_grad without tangent_grad. Activations, powers, clamps, reductions, softmax,
LayerNorm, GroupNorm, RMSNorm, BatchNorm (jvp_layers.epilogue_torch), attention
(attention_jvp.sdpa_jvp), dropout (one mask for the primal and every tangent) and max pooling.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .jvp_dual import Dual, _full, _nd, _pad, is_dual, primal
from .jvp_layers import BatchNormArgs, epilogue_torch
from .jvp_rules_linear import _mul, _out_shape
from .jvp_rules_shape import _dims, _index

aten = torch.ops.aten


def _unary(f, df):
    """y = f(x), ẏ = df(x, y, ẋ) (x and y broadcast over ẋ's leading T)."""
    def rule(ctx, x, *args):
        p, t = x.P()
        y = f(p, *args)
        with ctx.tan:
            yd = df(p, y, t, *args)
        return Dual(p=y, t=yd)
    return rule


def _silu_tangent(z, y, zd):
    s = torch.sigmoid(z)
    return zd * (s * (1 + z * (1 - s)))


# aten activation op -> ẏ = σ'(z) ż from (z, y = σ(z), ż, the op's arguments): the ops PyTorch's own
# forward-mode rules use (as jvp_layers.ACTIVATION_RULES, which the fused layers take), without
# recomputing y. ReLU and LeakyReLU read z detached (σ'' = 0).
ACTIVATION_TANGENTS = {
    aten.relu.default: lambda z, y, zd: aten.threshold_backward(zd, z.detach(), 0),
    aten.leaky_relu.default: lambda z, y, zd, slope=0.01: aten.leaky_relu_backward(zd, z.detach(), slope, False),
    aten.tanh.default: lambda z, y, zd: aten.tanh_backward(zd, y),
    aten.sigmoid.default: lambda z, y, zd: aten.sigmoid_backward(zd, y),
    aten.softplus.default: lambda z, y, zd, beta=1, threshold=20: aten.softplus_backward(zd, z, beta, threshold),
    aten.silu.default: _silu_tangent,
    aten.elu.default: lambda z, y, zd, alpha=1.0, scale=1, input_scale=1: aten.elu_backward(zd, alpha, scale,
                                                                                         input_scale, False, z),
    # z expanded, not broadcast: CPU fp32/bf16 gelu_backward goes to oneDNN, which refuses unequal shapes
    aten.gelu.default: lambda z, y, zd, approximate="none": aten.gelu_backward(zd, z.expand_as(zd),
                                                                               approximate=approximate),
}


def _activation(op):
    """y = σ(x) by the op itself, ẏ = σ'(x) ẋ (ACTIVATION_TANGENTS; without tangent_grad SiLU's
    fused silu_backward, which has no derivative of its own)."""
    tangent = ACTIVATION_TANGENTS[op]

    def rule(ctx, x, *args, **kwargs):
        p, t = x.P()
        y = op(p, *args, **kwargs)
        with ctx.tan:
            if op is aten.silu.default and not ctx.stack:
                yd = aten.silu_backward(t, p.expand_as(t))
            else:
                yd = tangent(p, y, t, *args, **kwargs)
        return Dual(p=y, t=yd)
    return rule


def _pow_scalar(ctx, x, e):
    if e == 2:
        return _unary(lambda p: p.pow(2), lambda p, y, t: t * (2 * p))(ctx, x)
    return _unary(lambda p: p.pow(e), lambda p, y, t: t * (e * p.pow(e - 1)))(ctx, x)


def _pow_tensor(ctx, a, b):
    """a^b, both may be dual: ẏ = b a^(b-1) ȧ + y log(a) ḃ."""
    if not is_dual(b):
        return None if isinstance(b, torch.Tensor) else _pow_scalar(ctx, a, b)
    shape = _out_shape(a, b)
    R = len(shape)
    pa, pb = primal(a), primal(b)
    y = torch.pow(pa, pb)
    with ctx.tan:
        yd = y * torch.log(pa) * _pad(b.P()[1], b.dim(), R)
        if is_dual(a):
            yd = yd + pb * torch.pow(pa, pb - 1) * _pad(a.P()[1], a.dim(), R)
    return Dual(p=y, t=_full(yd, shape))


def _pow_base(ctx, c, x):
    return _unary(lambda p: torch.pow(c, p), lambda p, y, t: t * (y * math.log(c)))(ctx, x)


def _clamp(ctx, x, lo=None, hi=None):
    """ẏ = ẋ strictly inside (lo, hi), 0 outside and at a bound: torch's clamp/hardtanh convention
    (torch.func.jvp and clamp_backward give 0 at x = lo and x = hi, torch 2.14.1)."""
    p, t = x.P()
    y = torch.clamp(p, lo, hi)
    with ctx.tan:
        keep = torch.ones_like(p, dtype=torch.bool)
        if lo is not None:
            keep = keep & (p > lo)
        if hi is not None:
            keep = keep & (p < hi)
        yd = t * keep
    return Dual(p=y, t=yd)


def _where(ctx, cond, a, b):
    shape = _out_shape(cond, a, b)
    R = len(shape)
    y = torch.where(cond, primal(a), primal(b))
    with ctx.tan:
        ta = _pad(a.P()[1], a.dim(), R) if is_dual(a) else torch.zeros((), dtype=y.dtype, device=y.device)
        tb = _pad(b.P()[1], b.dim(), R) if is_dual(b) else torch.zeros((), dtype=y.dtype, device=y.device)
        yd = torch.where(cond, ta, tb)
    return Dual(p=y, t=_full(yd, shape))


def _masked_fill(ctx, x, mask, value):
    p, t = x.P()
    return Dual(p=p.masked_fill(mask, value), t=t.masked_fill(mask, 0))


def _maximum(fn):
    """max(a, b): ẏ = ḃ + w (ȧ - ḃ), w = 1 where a wins, 0 where b does, ½ at a tie (torch's
    maximum/minimum forward-mode rule)."""
    def rule(ctx, a, b):
        shape = _out_shape(a, b)
        R = len(shape)
        pa, pb = primal(a), primal(b)
        y = fn(pa, pb)
        wins = (pa > pb) if fn is torch.maximum else (pa < pb)
        with ctx.tan:
            w = torch.where(pa == pb, 0.5, wins.to(y.dtype))
            ta = _pad(a.P()[1], a.dim(), R) if is_dual(a) else 0.0
            tb = _pad(b.P()[1], b.dim(), R) if is_dual(b) else 0.0
            yd = tb + w * (ta - tb)
        return Dual(p=y, t=_full(yd, shape))
    return rule


def _reduce(op, dims_at=0):
    """sum / mean over dims (None or []: all): linear, one call over H with the dims shifted."""
    def rule(ctx, x, dims=None, keepdim=False, dtype=None):
        r = x.dim()
        sd = list(range(1, r + 1)) if not dims else _dims(x.shape, dims if isinstance(dims, (list, tuple)) else [dims])
        if x.H is not None and ctx.stack:
            return Dual(H=op(x.H, sd, keepdim, dtype=dtype))
        p, t = x.P()
        y = op(p, list(range(r)) if not dims else dims, keepdim, dtype=dtype)
        with ctx.tan:
            yd = op(t, sd, keepdim, dtype=dtype)
        return Dual(p=y, t=yd)
    return rule


def _reduce_all(op):
    def rule(ctx, x, dtype=None):
        return _reduce(op)(ctx, x, None, False, dtype)
    return rule


def _var_dim(ctx, x, dims=None, unbiased=True, keepdim=False):
    """aten.var.dim (torch.var(x, dim)): correction 1 when unbiased, else 0."""
    return _var(ctx, x, dims, 1 if unbiased else 0, keepdim)


def _var(ctx, x, dims=None, correction=1, keepdim=False):
    """σ² = Σ (x - μ)² / (N - c): σ̇² = 2 Σ (x - μ)(ẋ - mean ẋ) / (N - c) = 2 Σ (x - μ) ẋ / (N - c)."""
    p, t = x.P()
    r = p.dim()
    dims = list(range(r)) if dims is None else (dims if isinstance(dims, (list, tuple)) else [dims])
    c = 1 if correction is None else correction
    y = torch.var(p, dims, correction=c, keepdim=keepdim)
    n = 1
    for d in dims:
        n *= p.shape[d]
    with ctx.tan:
        xc = p - p.mean(dims, keepdim=True)
        yd = (xc * t).sum(_dims(p.shape, dims), keepdim=keepdim) * (2.0 / max(n - c, 1))
    return Dual(p=y, t=yd)


def _vector_norm(ctx, x, ord=2, dims=None, keepdim=False, dtype=None):
    """‖x‖₂: d‖x‖ = Σ x ẋ / ‖x‖, 0 where ‖x‖ = 0 (torch's norm_jvp masks it; Σ x ẋ is 0 there)."""
    if ord != 2 or dtype is not None:
        return None
    p, t = x.P()
    r = p.dim()
    y = torch.linalg.vector_norm(p, 2, dims, keepdim)
    dl = list(range(r)) if not dims else (dims if isinstance(dims, (list, tuple)) else [dims])
    with ctx.tan:
        yd = (p * t).sum(_dims(p.shape, dl), keepdim=keepdim) / y.masked_fill(y == 0, 1)
    return Dual(p=y, t=yd)


def _amax(ctx, x, dims=(), keepdim=False):
    p, t = x.P()
    y = torch.amax(p, dims, keepdim)
    dl = list(range(p.dim())) if not dims else list(dims)
    with ctx.tan:
        yk = torch.amax(p, dl, True)
        m = (p == yk).to(t.dtype)
        yd = (t * m).sum(_dims(p.shape, dl), keepdim=keepdim) / m.sum(dl, keepdim=keepdim)
    return Dual(p=y, t=yd)


def _logsumexp(ctx, x, dims, keepdim=False):
    p, t = x.P()
    y = torch.logsumexp(p, dims, keepdim)
    dl = dims if isinstance(dims, (list, tuple)) else [dims]
    with ctx.tan:
        w = torch.exp(p - torch.logsumexp(p, dl, True))                  # softmax over dims
        yd = (w * t).sum(_dims(p.shape, dl), keepdim=keepdim)
    return Dual(p=y, t=yd)


def _cumsum(ctx, x, dim, dtype=None):
    if x.H is not None and ctx.stack:
        return Dual(H=torch.cumsum(x.H, _nd(dim, x.dim()), dtype=dtype))
    p, t = x.P()
    y = torch.cumsum(p, dim, dtype=dtype)
    with ctx.tan:
        yd = torch.cumsum(t, _nd(dim, x.dim()), dtype=dtype)
    return Dual(p=y, t=yd)


def _softmax(ctx, x, dim, half_to_float_or_dtype=None):
    """ẏ = y ⊙ (ẋ - Σ_d y ẋ)."""
    p, t = x.P()
    dtype = half_to_float_or_dtype if isinstance(half_to_float_or_dtype, torch.dtype) else None
    y = torch.softmax(p, dim, dtype=dtype)
    with ctx.tan:
        tt = t.to(y.dtype)
        yt = y * tt
        yd = yt - y * yt.sum(_nd(dim, p.dim()), keepdim=True)
    return Dual(p=y, t=yd)


def _log_softmax(ctx, x, dim, half_to_float_or_dtype=None):
    """ẏ = ẋ - Σ_d softmax(x) ẋ."""
    p, t = x.P()
    dtype = half_to_float_or_dtype if isinstance(half_to_float_or_dtype, torch.dtype) else None
    y = torch.log_softmax(p, dim, dtype=dtype)
    with ctx.tan:
        tt = t.to(y.dtype)
        yd = tt - (y.exp() * tt).sum(_nd(dim, p.dim()), keepdim=True)
    return Dual(p=y, t=yd)


def _normalized_tangent(xhat, r, t, dims):
    """r (ẋ - mean ẋ - x̂ mean(x̂ ẋ)) over dims of the tangent t [T, ...] (x̂, r broadcast over T)."""
    m1 = t.mean(dims, keepdim=True)
    m2 = (xhat * t).mean(dims, keepdim=True)
    return torch.addcmul(t - m1, xhat, m2, value=-1) * r


def _over_tangents(t, x, *stats):
    """x and per-sample statistics repeated for the T tangents [T·N, ...] (no copy when T = 1)."""
    T = t.shape[0]
    if T == 1:
        return (x, *stats)
    return (x.expand(T, *x.shape).reshape(-1, *x.shape[1:]), *[s.repeat(T, *(1,) * (s.dim() - 1)) for s in stats])


# The Jacobian of a normalisation x -> x̂ (within each group) is symmetric, r (I - 11ᵀ/n - x̂x̂ᵀ/n),
# so its tangent J ẋ is its own backward applied to ẋ: without tangent_grad (no graph needed) the
# native backward kernel computes it in one fused pass (CPU, SongUNet's GroupNorm at [32, 32, 32,
# 32]: the torch-op formula below took about 12 ms, see docs/jvp.md); γ then scales it.
def _layer_norm(ctx, x, shape, weight=None, bias=None, eps=1e-5, cudnn=True):
    """LayerNorm over the last len(shape) dims (module docstring)."""
    p, t = x.P()
    y, mean, rstd = aten.native_layer_norm(p, shape, weight, bias, eps)
    dims = tuple(range(-len(shape), 0))
    if not ctx.stack:
        with torch.no_grad():
            xs, m, r = _over_tangents(t, p, mean, rstd)
            yd = aten.native_layer_norm_backward(t.reshape(xs.shape), xs, shape, m, r, None, None,
                                                 [True, False, False])[0].view(t.shape)
            return Dual(p=y, t=(yd if weight is None else yd * weight).to(y.dtype))
    # native_layer_norm's backward does not carry gradients of its mean and rstd outputs (torch
    # 2.14.1, measured: 0.03 off in float64): with tangent_grad, taken again
    var, mean = torch.var_mean(p, dims, correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    xhat = (p - mean) * rstd
    yd = _normalized_tangent(xhat, rstd, t, dims)
    if weight is not None:
        yd = (yd * weight).to(y.dtype)                                     # bf16 x, float32 γ: y's dtype
    return Dual(p=y, t=yd)


def _group_norm(ctx, x, groups, weight=None, bias=None, eps=1e-5, cudnn=True):
    """GroupNorm: the same over each sample's group of C/G channels and the spatial dims."""
    p, t = x.P()
    p = p.contiguous()              # CUDA's kernel refuses a strided x (a stacked slice), the CPU's copies it
    N, C = p.shape[:2]
    HW = p[0, 0].numel()
    y, mean, rstd = aten.native_group_norm(p, weight, bias, N, C, HW, groups, eps)
    wshape = (C, *(1,) * (p.dim() - 2))
    if not ctx.stack:
        with torch.no_grad():
            xs, m, r = _over_tangents(t, p, mean, rstd)
            td, xs = t.reshape(xs.shape).contiguous(), xs.contiguous()
            yd = aten.native_group_norm_backward(td, xs, m, r, None, xs.shape[0], C, HW, groups,
                                                 [True, False, False])[0].view(t.shape)
            return Dual(p=y, t=(yd if weight is None else yd * weight.view(wshape)).to(y.dtype))
    with ctx.tan:
        g = p.reshape(N, groups, -1)
        xhat = (g - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)
        tg = t.reshape(t.shape[0], N, groups, -1)
        yd = _normalized_tangent(xhat, rstd.unsqueeze(-1), tg, -1).view(t.shape)
        if weight is not None:
            yd = (yd * weight.view(wshape)).to(y.dtype)
    return Dual(p=y, t=yd)


def _rms_norm(ctx, x, shape, weight=None, eps=None):
    """RMSNorm: y = γ x r, r = (mean x² + eps)^-½ over the last len(shape) dims; ẏ = γ r (ẋ - x r² mean(x ẋ)).
    The primal is aten.rms_norm itself (its CPU kernel returns a contiguous y, which the layout of
    everything after it follows); r is taken again for the tangent."""
    p, t = x.P()
    y = aten.rms_norm(p, shape, weight, eps)
    dims = tuple(range(-len(shape), 0))
    with ctx.tan:
        up = p.float() if p.dtype in (torch.float16, torch.bfloat16) else p
        # eps=None: the machine epsilon of the computation dtype, as aten.rms_norm (float32's for
        # bf16/fp16 inputs, not bf16's 2^-7, which would swamp mean x² of small activations)
        e = torch.finfo(up.dtype).eps if eps is None else eps
        tt = t.to(up.dtype)
        r = torch.rsqrt(up.square().mean(dims, keepdim=True) + e)
        yd = torch.addcmul(tt, up, (r * r) * (up * tt).mean(dims, keepdim=True), value=-1) * r
        yd = (yd if weight is None else yd * weight).to(y.dtype)          # bf16 x, float32 γ: y's dtype
    return Dual(p=y, t=yd)


def _batch_norm(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn=True):
    """BatchNorm through jvp_layers.epilogue_torch (its two modes; running statistics updated once)."""
    bn = BatchNormArgs(weight, bias, running_mean, running_var, bool(training), resolve_momentum(ctx, momentum), eps)
    if ctx.stack:
        return Dual(H=epilogue_torch(x.S(), None, bn, None, ctx.batch_norm, True))
    p, t = x.P()
    y = F.batch_norm(p, running_mean, running_var, weight, bias, bool(training), bn.momentum, eps)
    with ctx.tan:
        yd = epilogue_torch(torch.cat([p.detach().unsqueeze(0), t]), None, bn, None, ctx.batch_norm, False)[1:]
    return Dual(p=y, t=yd)


def resolve_momentum(ctx, momentum):
    """A traced momentum=None BatchNorm carries -(k + 1): its factor is 1/num_batches_tracked now."""
    if momentum is not None and momentum < 0:
        return 1.0 / float(ctx.lifted[ctx.cma[int(-momentum) - 1]])
    return momentum


def batch_norm_const(x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn, ctx):
    """aten.batch_norm on a value without tangents (the momentum resolved as above)."""
    return aten.batch_norm(x, weight, bias, running_mean, running_var, training, resolve_momentum(ctx, momentum),
                           eps, cudnn)


def _sdpa(ctx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """attention_jvp.sdpa_jvp: o and every tangent in one pass (Triton flash kernel on CUDA); without
    tangent_grad, SDPA's own o and the tangents without a graph (on the CPU from flash attention's
    log-sum-exp: attention_jvp.sdpa_with_detached_tangent)."""
    from .attention_jvp import sdpa_jvp, sdpa_with_detached_tangent
    if is_dual(attn_mask):
        return None                                                # a mask with a tangent: the fallback
    qs, ks, vs = (x.P() if is_dual(x) else (x, None) for x in (q, k, v))
    args = (qs[0], ks[0], vs[0], qs[1], ks[1], vs[1], attn_mask, is_causal, scale, dropout_p, enable_gqa)
    o, od = sdpa_jvp(*args) if ctx.stack else sdpa_with_detached_tangent(*args, flash=ctx.flash)
    return Dual(p=o, t=od)


def _dropout(ctx, x, p, train):
    """One mask for the primal and every tangent (a view: the mask broadcasts over T)."""
    if not train or p == 0:
        return x
    pp = x.primal
    mask = torch.empty_like(pp).bernoulli_(1 - p).div_(1 - p) if p < 1 else torch.zeros_like(pp)
    return _mul(ctx, x, mask)


def _native_dropout(ctx, x, p, train):
    if not train:
        return [x, torch.ones_like(x.primal, dtype=torch.bool)]
    keep = torch.empty_like(x.primal).bernoulli_(1 - p).bool()
    return [_mul(ctx, x, keep * (1.0 / (1 - p)) if p < 1 else keep * 0.0), keep]


def _feature_dropout(ctx, x, p, train):
    if not train or p == 0:
        return x
    pp = x.primal
    shape = pp.shape[:2] + (1,) * (pp.dim() - 2) if pp.dim() > 2 else pp.shape[:1] + (1,) * (pp.dim() - 1)
    mask = pp.new_empty(shape).bernoulli_(1 - p).div_(1 - p) if p < 1 else pp.new_zeros(shape)
    return _mul(ctx, x, mask)


def _max_pool2d(ctx, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    p, t = x.P()
    y, idx = F.max_pool2d(p, kernel, stride or None, padding, dilation, ceil_mode, return_indices=True)
    with ctx.tan:
        tf = t.flatten(-2)
        yd = tf.gather(-1, idx.flatten(-2).expand(t.shape[0], *idx.shape[:-2], -1)).view(t.shape[0], *y.shape)
    return Dual(p=y, t=yd)


def _embedding(ctx, weight, indices, *rest):
    if not is_dual(weight):
        return None
    return _index(ctx, weight, [indices])

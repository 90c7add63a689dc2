"""Stage 2 of owf_kernels.jvp: one stacked rule per ATen op (`RULES`), as torch-jet's operations table.

A value with a tangent is a `Dual`: the primal x [*S] and its T tangents ẋ [T, *S], held either
stacked, H = [x; ẋ] [1+T, *S] (one buffer), or as a pair (x, ẋ). Converting stacked -> pair is free
(two views of one split); pair -> stacked is one copy (a cat). Each rule takes what is cheaper:
- an op linear in its dual input (linear, conv, matmul with a constant operand, the upsampling and
  pooling ops, sums and means, a Dual + Dual) runs ONCE over H, the 1+T rows merged into its batch:
  the weights are read once, and one GEMM over (1+T)·B rows replaces 1+T GEMMs;
- a shape op (view, permute, cat, chunk...) applies to H or to both halves of a pair, keeping the form;
- a nonlinear op computes y = f(x) with the op itself (the plain forward's numbers) and ẏ from its
  tangent formula, on the pair, so a chain of elementwise ops between two linear ops pays one split
  and one cat in all: the epilogue a layer fuses by hand (jvp_layers.epilogue_torch).
Constant operands (parameters, buffers, labels) carry no tangent: a bias adds to the primal only.

Tangent formulas (ẏ for y = f(x); the forward-derivative ("result:") lines of PyTorch's
tools/autograd/derivatives.yaml, written for T tangents at once; x broadcasts over ẋ's leading T):

    a·b: ȧ b + a ḃ        a/b: (ȧ - y ḃ)/b      exp: y ẋ        log: ẋ/x       xᵉ: e xᵉ⁻¹ ẋ
    sin: cos x ẋ          cos: -sin x ẋ          tanh: (1 - y²) ẋ   sigmoid: y (1 - y) ẋ   sqrt: ẋ/(2y)
    rsqrt: -½ y³ ẋ        SiLU: s (1 + x (1 - s)) ẋ, s = sigmoid x       activations: σ'(x) ẋ (aten's *_backward op)
    softmax:  ẏ = y ⊙ (ẋ - Σ_d y ẋ)                                       log_softmax: ẋ - Σ_d softmax(x) ẋ
    LayerNorm / GroupNorm over a set G (per sample, per group): x̂ = (x - μ) r, r = (σ² + eps)^-½,
              y = γ x̂ + β,   ẏ = γ r (ẋ - mean_G ẋ - x̂ mean_G(x̂ ẋ))
    RMSNorm:  y = γ x r, r = (mean_G x² + eps)^-½,   ẏ = γ r (ẋ - x r² mean_G(x ẋ))
    BatchNorm: jvp_layers.epilogue_torch ("batch": through the batch statistics; "per_sample": held)
    SDPA:     attention_jvp.sdpa_jvp (sCM's Appendix F)
    dropout:  one mask m for the primal and every tangent: y = x m/(1-p), ẏ = ẋ m/(1-p)

With tangent_grad=False (ctx.stack False) every Dual stays a pair, each rule computes its primal
with autograd and its tangent under no_grad: the primal's graph is the plain forward's, and a
linear op runs twice (over B rows with autograd, over T·B rows without), so that backward neither
keeps the tangents' activations nor computes gradients for their rows.
"""
from __future__ import annotations

import math
import operator
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .jvp_layers import ACTIVATION_OPS, ACTIVATION_RULES, BatchNormArgs, epilogue_torch, unstack

aten = torch.ops.aten


class Dual:
    """A primal and its T tangents: stacked H [1+T, *S], or the pair p [*S], t [T, *S]."""
    __slots__ = ("H", "p", "t")

    def __init__(self, H=None, p=None, t=None):
        self.H, self.p, self.t = H, p, t

    def S(self) -> torch.Tensor:
        """The stacked form (one cat when the Dual is a pair)."""
        if self.H is None:
            # on the merged batch, so a channels_last pair stacks channels_last (see jvp_layers.unstack)
            p, t = self.p, self.t
            if p.dim() >= 1:
                self.H = torch.cat([p, t.flatten(0, 1)]).view(t.shape[0] + 1, *p.shape)
            else:
                self.H = torch.cat([p.unsqueeze(0), t])
        return self.H

    def P(self):
        """The pair form (views of one split when the Dual is stacked)."""
        if self.p is None:
            H = self.H
            if H.dim() >= 2:
                self.p, self.t = unstack(H)
            else:
                self.p, self.t = H[0], H[1:]
        return self.p, self.t

    @property
    def primal(self):
        return self.P()[0] if self.p is None else self.p

    @property
    def shape(self):
        return self.p.shape if self.p is not None else self.H.shape[1:]

    def dim(self):
        return len(self.shape)


class Ctx:
    """What the rules need to know of a call: T, the BatchNorm mode, whether to stack (tangent_grad),
    the context the tangent runs in (no_grad without tangent_grad), the layout choice and the
    lifted inputs (momentum=None BatchNorms read num_batches_tracked there)."""

    def __init__(self, T, batch_norm, tangent_grad, channels_last=False, lifted=(), cma=()):
        self.T, self.batch_norm, self.stack = T, batch_norm, tangent_grad
        self.tan = nullcontext() if tangent_grad else torch.no_grad()
        self.channels_last, self.lifted, self.cma = channels_last, lifted, cma


def is_dual(a) -> bool:
    return type(a) is Dual


def primal(a):
    return a.primal if type(a) is Dual else a


def _pad(x: torch.Tensor, rank: int, R: int) -> torch.Tensor:
    """A stacked/tangent tensor [L, *S] (len(S) = rank) viewed as [L, 1, ..., 1, *S] of R + 1 dims:
    broadcasting against an operand of R dims then aligns S, not L, from the right."""
    return x if rank >= R else x.view(x.shape[0], *((1,) * (R - rank)), *x.shape[1:])


def _nd(d: int, rank: int) -> int:
    """A dim of the primal (negative allowed) -> the same dim of its stacked / tangent tensor."""
    return (d % max(rank, 1)) + 1 if d >= 0 or rank > 0 else d


def _full(t: torch.Tensor, shape) -> torch.Tensor:
    """A tangent [T, *s] broadcast (a view) to [T, *shape]."""
    return t if tuple(t.shape[1:]) == tuple(shape) else t.expand(t.shape[0], *shape)


def _zeros(ctx, x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(()).expand(ctx.T, *x.shape)


# ---------------------------------------------------------------------------------------------
# Shape ops: the same op on H, or on both halves of a pair, with the dims shifted past the T dim
# ---------------------------------------------------------------------------------------------
def _shape_rule(op, shift):
    """shift(x_shape, lead, *args) -> args for the stacked/tangent tensor whose leading size is lead."""
    def rule(ctx, x, *args):
        if x.H is not None:
            return _wrap(op(x.H, *shift(x.H.shape[1:], x.H.shape[0], *args)), "H")
        p, t = x.p, x.t
        return _wrap2(op(p, *args), op(t, *shift(p.shape, t.shape[0], *args)))
    return rule


def _wrap(out, form):
    if isinstance(out, (list, tuple)):
        return [Dual(H=o) for o in out]
    return Dual(H=out)


def _wrap2(p, t):
    if isinstance(p, (list, tuple)):
        return [Dual(p=a, t=b) for a, b in zip(p, t)]
    return Dual(p=p, t=t)


def _dims(shape, dims):
    r = len(shape)
    return [_nd(d, r) for d in dims]


def _sizes(shape, lead, size, *rest):
    return ([lead, *size], *rest)


def _dim_at(i):
    """shift for ops whose argument i (after x) is a dim (the rest unchanged)."""
    def shift(shape, lead, *args):
        args = list(args)
        if i < len(args):
            args[i] = _nd(args[i], len(shape))
        return args
    return shift


def _dim_default0(i, n_default):
    """shift for ops whose dim argument i defaults to 0 when omitted (chunk, split, unbind)."""
    def shift(shape, lead, *args):
        args = list(args) + [None] * (n_default - len(args))
        args = args[:max(len(args), i + 1)]
        if args[i] is None:
            args[i] = 0
        args[i] = _nd(args[i], len(shape))
        return [a for a in args if a is not None] if len(args) > i + 1 and all(a is None for a in args[i + 1:]) else args
    return shift


def _same(shape, lead, *args):
    return args


def _permute(shape, lead, dims):
    return ([0] + _dims(shape, dims),)


def _transpose(shape, lead, d0, d1):
    return (_nd(d0, len(shape)), _nd(d1, len(shape)))


def _unsqueeze(shape, lead, d):
    return ((d % (len(shape) + 1)) + 1,)


def _squeeze_dims(shape, lead, dims):
    return (_dims(shape, dims if isinstance(dims, (list, tuple)) else [dims]),)


def _flatten(shape, lead, s=0, e=-1):
    if len(shape) == 0:
        return (1, 1)
    return (_nd(s, len(shape)), _nd(e, len(shape)))


def _slice(shape, lead, d=0, *rest):
    return (_nd(d, len(shape)), *rest)


def _movedim(shape, lead, src, dst):
    f = (lambda d: _dims(shape, d)) if isinstance(src, (list, tuple)) else (lambda d: _nd(d, len(shape)))
    return (f(src), f(dst))


def _gather(shape, lead, d, index, *rest):
    return (_nd(d, len(shape)), index.expand(lead, *index.shape), *rest)


def _index(shape, lead, indices):
    return ([None, *indices],)


def _roll(shape, lead, shifts, dims=()):
    return (shifts, _dims(shape, dims))


def _expand_rule(ctx, x, size, implicit=False):
    r = x.dim()
    if x.H is not None:
        return Dual(H=_pad(x.H, r, len(size)).expand(x.H.shape[0], *size))
    p, t = x.P()
    return Dual(p=p.expand(*size), t=_pad(t, r, len(size)).expand(t.shape[0], *size))


def _repeat_rule(ctx, x, reps):
    r = x.dim()
    if x.H is not None:
        return Dual(H=_pad(x.H, r, len(reps)).repeat(1, *reps))
    p, t = x.P()
    return Dual(p=p.repeat(*reps), t=_pad(t, r, len(reps)).repeat(1, *reps))


def _tile_rule(ctx, x, reps):
    reps = list(reps)
    if len(reps) < x.dim():
        reps = [1] * (x.dim() - len(reps)) + reps
    return _repeat_rule(ctx, x, reps)


def _squeeze_all(ctx, x):
    dims = [i for i, s in enumerate(x.shape) if s == 1]
    return RULES[aten.squeeze.dims](ctx, x, dims)


def _t_rule(ctx, x):
    return x if x.dim() < 2 else RULES[aten.transpose.int](ctx, x, 0, 1)


def _detach(ctx, x, *args):
    return x.primal.detach()


def _pad_rule(ctx, x, pad, mode="constant", value=None):
    """F.pad: a constant value pads the primal, 0 the tangents; reflect/replicate/circular are linear."""
    if mode == "constant":
        return _constant_pad(ctx, x, pad, 0.0 if value is None else value)
    return _merged(lambda h: aten.pad(h, pad, mode, value), x)


def _constant_pad(ctx, x, pad, value=0.0):
    if value == 0 and x.H is not None:
        return Dual(H=aten.constant_pad_nd(x.H, pad, 0.0))
    p, t = x.P()
    return Dual(p=aten.constant_pad_nd(p, pad, value), t=aten.constant_pad_nd(t, pad, 0.0))


# ---------------------------------------------------------------------------------------------
# Ops on a batch: the 1+T (or T) rows merged into the batch dim
# ---------------------------------------------------------------------------------------------
def _merged(op, x, batched_rank=None, stack=False):
    """op on H [1+T, B, ...] as [(1+T)·B, ...], or on H itself when the primal has no batch dim
    (rank < batched_rank: 1+T is then the batch). A pair runs as two calls (no cat) unless stack."""
    def on(h, r):
        if batched_rank is not None and r < batched_rank:
            return op(h)
        out = op(h.flatten(0, 1))
        return out.view(h.shape[0], h.shape[1], *out.shape[1:])
    r = x.dim()
    if x.H is not None or stack:
        return Dual(H=on(x.S(), r))
    p, t = x.P()
    return Dual(p=op(p), t=on(t, r))


def _merged_rule(op, batched_rank):
    def rule(ctx, x, *args):
        return _merged(lambda h: op(h, *args), x, batched_rank)
    return rule


# ---------------------------------------------------------------------------------------------
# Linear ops with a constant weight: one call over [x; ẋ], the bias on the primal only
# ---------------------------------------------------------------------------------------------
def _with_bias(A: Dual, bias, shape_fn):
    """A = [a; ȧ] -> (a + b, ȧ): the bias shifts the primal only."""
    if bias is None:
        return A
    a, ad = A.P()
    return Dual(p=a + shape_fn(bias), t=ad)


def _linear_op(ctx, x, op, bias, bias_shape, batched_rank, dual_weight=None):
    """op(h) without bias, for h the merged stacked batch; ctx.stack False: the primal with autograd
    (and its bias, as the plain forward adds it) and the tangents under no_grad."""
    if ctx.stack:
        return _with_bias(_merged(op, x, batched_rank, stack=True), bias, bias_shape)
    p, t = x.P()
    y = op(p)
    y = y if bias is None else y + bias_shape(bias)
    with ctx.tan:
        if batched_rank is not None and p.dim() < batched_rank:
            yd = op(t)
        else:
            yd = op(t.flatten(0, 1))
            yd = yd.view(t.shape[0], t.shape[1], *yd.shape[1:])
    return Dual(p=y, t=yd)


def _conv_rule(kind):
    def rule(ctx, x, weight, bias=None, stride=1, padding=0, *rest):
        if is_dual(weight) or is_dual(bias):
            return None                                            # a tangent weight: the per-op fallback
        nd = weight.dim() - 2
        if kind == "conv":
            dilation, groups = rest + (1, 1)[len(rest):]
            fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
            op = lambda h: fn(h, weight, None, stride, padding, dilation, groups)      # noqa: E731
        else:
            output_padding, groups, dilation = rest + (0, 1, 1)[len(rest):]
            fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
            op = lambda h: fn(h, weight, None, stride, padding, output_padding, groups, dilation)   # noqa: E731
        return _linear_op(ctx, x, op, bias, lambda b: b.view(-1, *(1,) * nd), nd + 2)
    return rule


def _convolution(ctx, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        return _conv_rule("conv_transpose")(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation)
    return _conv_rule("conv")(ctx, x, weight, bias, stride, padding, dilation, groups)


def _linear(ctx, x, weight, bias=None):
    """y = x Wᵀ + b. x dual, W const: one GEMM over [x; ẋ]. W (or b) dual: ẏ = ẋ Wᵀ + x Ẇᵀ + ḃ."""
    if not is_dual(x):
        return _bilinear(ctx, lambda a, w: F.linear(a, w), x, weight, extra=bias)
    if is_dual(weight) or is_dual(bias):
        return _bilinear(ctx, lambda a, w: F.linear(a, w), x, weight, extra=bias)
    if ctx.stack:
        return _with_bias(Dual(H=F.linear(x.S(), weight)), bias, lambda b: b)
    p, t = x.P()
    y = F.linear(p, weight, bias)
    with ctx.tan:
        yd = F.linear(t, weight)
    return Dual(p=y, t=yd)


def _bilinear(ctx, f, a, b, extra=None):
    """y = f(a, b) (+ extra), f bilinear: ẏ = f(ȧ, b) + f(a, ḃ) (+ extra's tangent). One operand
    dual: one call over its stacked rows; both: [a; ȧ] with b, then + f(a, ḃ)."""
    da, db = is_dual(a), is_dual(b)
    if da and not db and ctx.stack:
        out = Dual(H=f(a.S(), b))
    elif db and not da and ctx.stack and b.dim() >= 2 and (a.dim() >= 2):
        out = Dual(H=f(a, b.S()))
    else:
        pa, pb = primal(a), primal(b)
        if da and ctx.stack:
            Hy = f(a.S(), pb)
            y, yd = unstack(Hy) if Hy.dim() >= 2 else (Hy[0], Hy[1:])
            if db:
                yd = yd + f(pa, b.P()[1])
        else:
            y = f(pa, pb)
            with ctx.tan:
                yd = None
                if da:
                    yd = f(a.P()[1], pb)
                if db:
                    yb = f(pa, b.P()[1]) if pb.dim() >= 2 or not da else None
                    yd = yb if yd is None else yd + yb
        out = Dual(p=y, t=yd)
    if extra is None:
        return out
    return _add(ctx, out, extra)


def _matmul(ctx, a, b):
    """a @ b with numpy broadcasting: the stacked operand is padded so its T dim broadcasts against
    the other's batch dims."""
    ra, rb = len(primal(a).shape), len(primal(b).shape)
    R = max(ra, rb)

    def f(x, y):
        # x or y may carry a leading T / 1+T dim (as their shape's extra dim); pad the other side's
        # batch dims so that dim broadcasts
        xs = _pad(x, ra, R) if x.dim() == ra + 1 and ra >= 2 else x
        ys = _pad(y, rb, R) if y.dim() == rb + 1 and rb >= 2 else y
        return torch.matmul(xs, ys)
    if ra < 2 or rb < 2:
        # vector operands: fall back to the per-tangent loop form (rare in networks)
        return _vector_matmul(ctx, a, b)
    return _bilinear(ctx, f, a, b)


def _vector_matmul(ctx, a, b):
    pa, pb = primal(a), primal(b)
    y = torch.matmul(pa, pb)
    with ctx.tan:
        terms = []
        if is_dual(a):
            terms.append(torch.stack([torch.matmul(ta, pb) for ta in a.P()[1]]))
        if is_dual(b):
            terms.append(torch.stack([torch.matmul(pa, tb) for tb in b.P()[1]]))
        yd = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return Dual(p=y, t=yd)


def _mm(ctx, a, b):
    return _matmul(ctx, a, b)


def _addmm(ctx, bias, a, b, beta=1, alpha=1):
    y = _matmul(ctx, a, b)
    if alpha != 1:
        y = _mul(ctx, y, alpha)
    if beta == 0:
        return y
    return _add(ctx, y, bias, alpha=beta)


def _outer(ctx, a, b):
    return _bilinear(ctx, lambda x, y: x.unsqueeze(-1) * y.unsqueeze(-2) if x.dim() > 1 or y.dim() > 1
                     else torch.outer(x, y), a, b)


def _einsum(ctx, eq, operands):
    """A multilinear map: each dual operand in turn takes its tangent (with an extra leading index);
    one dual operand runs once over its stacked rows."""
    duals = [i for i, o in enumerate(operands) if is_dual(o)]
    ins, out = eq.replace(" ", "").split("->") if "->" in eq else (eq.replace(" ", ""), None)
    ins = ins.split(",")
    z = next(c for c in "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba" if c not in eq)
    if out is None or "..." in eq:
        return None                                                 # implicit output or ellipsis: fallback

    def eq_for(i):
        return ",".join(z + s if j == i else s for j, s in enumerate(ins)) + "->" + z + out
    prim = [primal(o) for o in operands]
    if len(duals) == 1 and ctx.stack:
        i = duals[0]
        return Dual(H=torch.einsum(eq_for(i), *[operands[j].S() if j == i else prim[j] for j in range(len(prim))]))
    y = torch.einsum(eq, *prim)
    with ctx.tan:
        yd = None
        for i in duals:
            term = torch.einsum(eq_for(i), *[operands[j].P()[1] if j == i else prim[j] for j in range(len(prim))])
            yd = term if yd is None else yd + term
    return Dual(p=y, t=yd)


# ---------------------------------------------------------------------------------------------
# Elementwise arithmetic
# ---------------------------------------------------------------------------------------------
def _out_shape(*xs):
    return torch.broadcast_shapes(*[tuple(primal(x).shape) if isinstance(primal(x), torch.Tensor) else () for x in xs])


def _add(ctx, a, b, alpha=1):
    """a + α b: linear. Both dual and stacked: one add of the stacked tensors; else the pair."""
    shape = _out_shape(a, b)
    R = len(shape)
    da, db = is_dual(a), is_dual(b)
    if da and db:
        if a.H is not None and b.H is not None and ctx.stack:
            Ha, Hb = _pad(a.H, a.dim(), R), _pad(b.H, b.dim(), R)
            return Dual(H=Ha + Hb if alpha == 1 else torch.add(Ha, Hb, alpha=alpha))
        (pa, ta), (pb, tb) = a.P(), b.P()
        y = pa + pb if alpha == 1 else torch.add(pa, pb, alpha=alpha)
        with ctx.tan:
            ta, tb = _pad(ta, a.dim(), R), _pad(tb, b.dim(), R)
            yd = ta + tb if alpha == 1 else torch.add(ta, tb, alpha=alpha)
        return Dual(p=y, t=_full(yd, shape))
    if da:
        pa, ta = a.P()
        return Dual(p=pa + b if alpha == 1 else torch.add(pa, b, alpha=alpha), t=_full(_pad(ta, a.dim(), R), shape))
    pb, tb = b.P()
    y = a + pb if alpha == 1 else torch.add(a, pb, alpha=alpha)
    with ctx.tan:
        yd = _pad(tb, b.dim(), R) if alpha == 1 else _pad(tb, b.dim(), R) * alpha
    return Dual(p=y, t=_full(yd, shape))


def _sub(ctx, a, b, alpha=1):
    return _add(ctx, a, b, alpha=-alpha)


def _rsub(ctx, a, b, alpha=1):
    return _add(ctx, b, _mul(ctx, a, -alpha) if alpha != 1 else _neg(ctx, a))


def _neg(ctx, a):
    return Dual(H=-a.H) if a.H is not None and ctx.stack else Dual(p=-a.p, t=-a.t)


def _mul(ctx, a, b):
    """a b: with one constant operand linear (one multiply over H); both dual: ȧ b + a ḃ."""
    shape = _out_shape(a, b)
    R = len(shape)
    da, db = is_dual(a), is_dual(b)
    if da and db:
        (pa, ta), (pb, tb) = a.P(), b.P()
        y = pa * pb
        with ctx.tan:
            yd = torch.addcmul(_pad(ta, a.dim(), R) * pb, pa, _pad(tb, b.dim(), R))
        return Dual(p=y, t=_full(yd, shape))
    x, c = (a, b) if da else (b, a)
    if x.H is not None and ctx.stack:
        return Dual(H=_pad(x.H, x.dim(), R) * c)
    p, t = x.P()
    y = p * c
    with ctx.tan:
        yd = _pad(t, x.dim(), R) * c
    return Dual(p=y, t=_full(yd, shape))


def _div(ctx, a, b, rounding_mode=None):
    """a / b: b constant, linear; else ẏ = (ȧ - y ḃ) / b."""
    if rounding_mode is not None:
        return primal(a).div(primal(b), rounding_mode=rounding_mode)      # piecewise constant: no tangent
    shape = _out_shape(a, b)
    R = len(shape)
    if not is_dual(b):
        if a.H is not None and ctx.stack:
            return Dual(H=_pad(a.H, a.dim(), R) / b)
        pa, ta = a.P()
        y = pa / b
        with ctx.tan:
            yd = _pad(ta, a.dim(), R) / b
        return Dual(p=y, t=_full(yd, shape))
    pb, tb = b.P()
    y = primal(a) / pb
    with ctx.tan:
        yd = -y * _pad(tb, b.dim(), R)
        if is_dual(a):
            yd = yd + _pad(a.P()[1], a.dim(), R)
        yd = yd / pb
    return Dual(p=y, t=_full(yd, shape))


def _addcmul(ctx, s, a, b, value=1):
    return _add(ctx, s, _mul(ctx, a, b), alpha=value)


def _addcdiv(ctx, s, a, b, value=1):
    return _add(ctx, s, _div(ctx, a, b), alpha=value)


def _unary(f, df):
    """y = f(x), ẏ = df(x, y, ẋ) (x and y broadcast over ẋ's leading T)."""
    def rule(ctx, x, *args):
        p, t = x.P()
        y = f(p, *args)
        with ctx.tan:
            yd = df(p, y, t, *args)
        return Dual(p=y, t=yd)
    return rule


def _activation(op):
    """An activation through jvp_layers.ACTIVATION_RULES: ẏ by aten's own σ'(z) ż op (as the fused layer)."""
    def rule(ctx, x, *args):
        fn = ACTIVATION_RULES[type(m := ACTIVATION_OPS[op](x, *args))](m)
        p, t = x.P()
        if ctx.stack:
            y, yd = fn(p, t)
            return Dual(p=y, t=yd)
        y = op(p, *args)
        with ctx.tan:
            yd = fn(p.detach(), t)[1]
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
    p, t = x.P()
    y = torch.clamp(p, lo, hi)
    with ctx.tan:
        keep = torch.ones_like(p, dtype=torch.bool)
        if lo is not None:
            keep = keep & (p >= lo)
        if hi is not None:
            keep = keep & (p <= hi)
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
    def rule(ctx, a, b):
        shape = _out_shape(a, b)
        R = len(shape)
        pa, pb = primal(a), primal(b)
        y = fn(pa, pb)
        pick = (pa >= pb) if fn is torch.maximum else (pa <= pb)
        with ctx.tan:
            ta = _pad(a.P()[1], a.dim(), R) if is_dual(a) else 0.0
            tb = _pad(b.P()[1], b.dim(), R) if is_dual(b) else 0.0
            yd = torch.where(pick, ta, tb)
        return Dual(p=y, t=_full(yd, shape))
    return rule


# ---------------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------------
def _reduce(op, dims_at=0):
    """sum / mean over dims (None or []: all): linear, one call over H with the dims shifted."""
    def rule(ctx, x, dims=None, *rest):
        r = x.dim()
        sd = list(range(1, r + 1)) if not dims else _dims(x.shape, dims if isinstance(dims, (list, tuple)) else [dims])
        if x.H is not None and ctx.stack:
            return Dual(H=op(x.H, sd, *rest))
        p, t = x.P()
        y = op(p, list(range(r)) if not dims else dims, *rest)
        with ctx.tan:
            yd = op(t, sd, *rest)
        return Dual(p=y, t=yd)
    return rule


def _reduce_all(op):
    def rule(ctx, x, dtype=None):
        return _reduce(op)(ctx, x, None, False, dtype)
    return rule


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
    """‖x‖₂: d‖x‖ = Σ x ẋ / ‖x‖."""
    if ord != 2 or dtype is not None:
        return None
    p, t = x.P()
    r = p.dim()
    y = torch.linalg.vector_norm(p, 2, dims, keepdim)
    dl = list(range(r)) if not dims else (dims if isinstance(dims, (list, tuple)) else [dims])
    with ctx.tan:
        yd = (p * t).sum(_dims(p.shape, dl), keepdim=keepdim) / y
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


# ---------------------------------------------------------------------------------------------
# Softmax and normalisations
# ---------------------------------------------------------------------------------------------
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
    return r * (t - m1 - xhat * m2)


def _layer_norm(ctx, x, shape, weight=None, bias=None, eps=1e-5, cudnn=True):
    """LayerNorm over the last len(shape) dims (module docstring)."""
    p, t = x.P()
    y, mean, rstd = aten.native_layer_norm(p, shape, weight, bias, eps)
    with ctx.tan:
        xhat = (p - mean) * rstd
        dims = tuple(range(-len(shape), 0))
        yd = _normalized_tangent(xhat, rstd, t, dims)
        if weight is not None:
            yd = yd * weight
    return Dual(p=y, t=yd)


def _group_norm(ctx, x, groups, weight=None, bias=None, eps=1e-5, cudnn=True):
    """GroupNorm: the same over each sample's group of C/G channels and the spatial dims."""
    p, t = x.P()
    N, C = p.shape[:2]
    HW = p[0, 0].numel()
    y, mean, rstd = aten.native_group_norm(p, weight, bias, N, C, HW, groups, eps)
    with ctx.tan:
        g = p.reshape(N, groups, -1)
        xhat = (g - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)
        tg = t.reshape(t.shape[0], N, groups, -1)
        yd = _normalized_tangent(xhat, rstd.unsqueeze(-1), tg, -1).view(t.shape)
        if weight is not None:
            yd = yd * weight.view(C, *(1,) * (p.dim() - 2))
    return Dual(p=y, t=yd)


def _rms_norm(ctx, x, shape, weight=None, eps=None):
    """RMSNorm: y = γ x r, ẏ = γ r (ẋ - x r² mean(x ẋ))."""
    p, t = x.P()
    y = aten.rms_norm(p, shape, weight, eps)
    dims = tuple(range(-len(shape), 0))
    with ctx.tan:
        e = torch.finfo(p.dtype).eps if eps is None else eps
        r = torch.rsqrt(p.pow(2).mean(dims, keepdim=True) + e)
        yd = r * (t - p * (r * r) * (p * t).mean(dims, keepdim=True))
        if weight is not None:
            yd = yd * weight
    return Dual(p=y, t=yd.to(y.dtype))


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


# ---------------------------------------------------------------------------------------------
# Attention, dropout, upsampling, pooling
# ---------------------------------------------------------------------------------------------
def _sdpa(ctx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """attention_jvp.sdpa_jvp: o and every tangent in one pass (Triton flash kernel on CUDA)."""
    from .attention_jvp import sdpa_jvp
    if is_dual(attn_mask):
        return None                                                # a mask with a tangent: the fallback
    qs, ks, vs = (x.P() if is_dual(x) else (x, None) for x in (q, k, v))
    if ctx.stack:
        o, od = sdpa_jvp(qs[0], ks[0], vs[0], qs[1], ks[1], vs[1], attn_mask, is_causal, scale, dropout_p, enable_gqa)
        return Dual(p=o, t=od)
    o = F.scaled_dot_product_attention(qs[0], ks[0], vs[0], attn_mask, dropout_p, is_causal, scale=scale,
                                       enable_gqa=enable_gqa)
    with ctx.tan:
        od = sdpa_jvp(qs[0], ks[0], vs[0], qs[1], ks[1], vs[1], attn_mask, is_causal, scale, dropout_p, enable_gqa)[1]
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
    return RULES[aten.index.Tensor](ctx, weight, [indices])


def _cat(ctx, tensors, dim=0):
    """cat: of stacked Duals one cat of H; else of the pairs (a constant piece: zero tangents)."""
    shapes = [primal(x).shape for x in tensors]
    r = max(len(s) for s in shapes)
    d = _nd(dim, r)
    if ctx.stack and all(is_dual(x) and x.H is not None for x in tensors):
        return Dual(H=torch.cat([x.H for x in tensors], d))
    y = torch.cat([primal(x) for x in tensors], dim)
    with ctx.tan:
        yd = torch.cat([x.P()[1] if is_dual(x) else _zeros(ctx, x) for x in tensors if primal(x).numel() or len(primal(x).shape) == r], d)
    return Dual(p=y, t=yd)


def _stack(ctx, tensors, dim=0):
    r = primal(tensors[0]).dim() + 1
    return _cat(ctx, [RULES[aten.unsqueeze.default](ctx, x, dim % r) if is_dual(x) else primal(x).unsqueeze(dim % r)
                      for x in tensors], dim)


def _copy(ctx, dst, src, non_blocking=False):
    """dst.copy_(src) as a value: src, broadcast to dst's shape and cast to its dtype."""
    d = primal(dst)
    if not is_dual(src):
        return src.to(d.dtype).expand_as(d).clone()
    p, t = src.P()
    return Dual(p=p.to(d.dtype).expand_as(d).clone(), t=_full(_pad(t, src.dim(), d.dim()), d.shape).to(d.dtype).clone())


def _to_dtype(ctx, x, *args, **kwargs):
    p, t = x.P() if not (x.H is not None and ctx.stack) else (None, None)
    if p is None:
        return Dual(H=x.H.to(*args, **kwargs))
    return Dual(p=p.to(*args, **kwargs), t=t.to(*args, **kwargs))


def _to_copy(ctx, x, **kwargs):
    if x.H is not None and ctx.stack:
        return Dual(H=aten._to_copy(x.H, **kwargs))
    p, t = x.P()
    return Dual(p=aten._to_copy(p, **kwargs), t=aten._to_copy(t, **kwargs))


def _getitem(ctx, xs, i):
    return xs[i]


# ---------------------------------------------------------------------------------------------
# The table: aten op -> rule(ctx, *args) -> Dual (or a list of them; None: use the fallback)
# ---------------------------------------------------------------------------------------------
RULES = {
    # shape ops
    # view as reshape: the stacked layout is the runner's choice (channels_last after a fused layer),
    # where the primal's own view would have been valid
    aten.view.default: _shape_rule(aten.reshape.default, _sizes),
    aten.reshape.default: _shape_rule(aten.reshape.default, _sizes),
    aten._unsafe_view.default: _shape_rule(aten.reshape.default, _sizes),
    aten.expand.default: _expand_rule,
    aten.permute.default: _shape_rule(aten.permute.default, _permute),
    aten.transpose.int: _shape_rule(aten.transpose.int, _transpose),
    aten.t.default: _t_rule,
    aten.unsqueeze.default: _shape_rule(aten.unsqueeze.default, _unsqueeze),
    aten.squeeze.dim: _shape_rule(aten.squeeze.dims, lambda s, lead, d: _squeeze_dims(s, lead, [d])),
    aten.squeeze.dims: _shape_rule(aten.squeeze.dims, _squeeze_dims),
    aten.squeeze.default: _squeeze_all,
    aten.flatten.using_ints: _shape_rule(aten.flatten.using_ints, _flatten),
    aten.unflatten.int: _shape_rule(aten.unflatten.int, _dim_at(0)),
    aten.select.int: _shape_rule(aten.select.int, _dim_at(0)),
    aten.slice.Tensor: _shape_rule(aten.slice.Tensor, _slice),
    aten.narrow.default: _shape_rule(aten.narrow.default, _dim_at(0)),
    aten.chunk.default: _shape_rule(aten.chunk.default, _dim_default0(1, 2)),
    aten.split.Tensor: _shape_rule(aten.split.Tensor, _dim_default0(1, 2)),
    aten.split_with_sizes.default: _shape_rule(aten.split_with_sizes.default, _dim_default0(1, 2)),
    aten.unbind.int: _shape_rule(aten.unbind.int, _dim_default0(0, 1)),
    aten.movedim.int: _shape_rule(aten.movedim.int, _movedim),
    aten.flip.default: _shape_rule(aten.flip.default, lambda s, lead, dims: (_dims(s, dims),)),
    aten.roll.default: _shape_rule(aten.roll.default, _roll),
    aten.repeat.default: _repeat_rule,
    aten.tile.default: _tile_rule,
    aten.clone.default: _shape_rule(aten.clone.default, _same),
    aten.contiguous.default: _shape_rule(aten.contiguous.default, _same),
    aten.alias.default: _shape_rule(aten.alias.default, _same),
    aten.index_select.default: _shape_rule(aten.index_select.default, _dim_at(0)),
    aten.gather.default: _shape_rule(aten.gather.default, _gather),
    aten.index.Tensor: _shape_rule(aten.index.Tensor, _index),
    aten.constant_pad_nd.default: _constant_pad,
    aten.pad.default: _pad_rule,
    aten.to.dtype: _to_dtype,
    aten.to.dtype_layout: _to_dtype,
    aten.to.device: _to_dtype,
    aten._to_copy.default: _to_copy,
    aten.type_as.default: lambda ctx, x, other: _to_dtype(ctx, x, primal(other).dtype),
    aten.detach.default: _detach,
    aten.copy.default: _copy,
    aten.cat.default: _cat,
    aten.stack.default: _stack,
    operator.getitem: _getitem,
    # batch ops, linear
    aten.upsample_nearest2d.vec: _merged_rule(aten.upsample_nearest2d.vec, 4),
    aten.upsample_nearest1d.vec: _merged_rule(aten.upsample_nearest1d.vec, 3),
    aten.upsample_nearest3d.vec: _merged_rule(aten.upsample_nearest3d.vec, 5),
    aten._upsample_nearest_exact2d.vec: _merged_rule(aten._upsample_nearest_exact2d.vec, 4),
    aten.upsample_bilinear2d.vec: _merged_rule(aten.upsample_bilinear2d.vec, 4),
    aten.upsample_bicubic2d.vec: _merged_rule(aten.upsample_bicubic2d.vec, 4),
    aten.avg_pool1d.default: _merged_rule(aten.avg_pool1d.default, 3),
    aten.avg_pool2d.default: _merged_rule(aten.avg_pool2d.default, 4),
    aten.avg_pool3d.default: _merged_rule(aten.avg_pool3d.default, 5),
    aten.adaptive_avg_pool2d.default: _merged_rule(aten.adaptive_avg_pool2d.default, 4),
    aten.adaptive_avg_pool1d.default: _merged_rule(aten.adaptive_avg_pool1d.default, 3),
    aten.pixel_shuffle.default: _merged_rule(aten.pixel_shuffle.default, 4),
    aten.pixel_unshuffle.default: _merged_rule(aten.pixel_unshuffle.default, 4),
    aten.max_pool2d.default: _max_pool2d,
    # linear ops
    aten.linear.default: _linear,
    aten.conv1d.default: _conv_rule("conv"),
    aten.conv2d.default: _conv_rule("conv"),
    aten.conv3d.default: _conv_rule("conv"),
    aten.conv1d.padding: _conv_rule("conv"),
    aten.conv2d.padding: _conv_rule("conv"),
    aten.conv3d.padding: _conv_rule("conv"),
    aten.conv_transpose1d.default: _conv_rule("conv_transpose"),
    aten.conv_transpose2d.input: _conv_rule("conv_transpose"),
    aten.conv_transpose3d.input: _conv_rule("conv_transpose"),
    aten.convolution.default: _convolution,
    aten.matmul.default: _matmul,
    aten.mm.default: _mm,
    aten.bmm.default: _mm,
    aten.addmm.default: _addmm,
    aten.einsum.default: _einsum,
    aten.ger.default: _outer,
    aten.outer.default: _outer,
    aten.embedding.default: _embedding,
    # elementwise
    aten.add.Tensor: _add,
    aten.add.Scalar: _add,
    aten.sub.Tensor: _sub,
    aten.sub.Scalar: _sub,
    aten.rsub.Tensor: _rsub,
    aten.rsub.Scalar: _rsub,
    aten.neg.default: _neg,
    aten.mul.Tensor: _mul,
    aten.mul.Scalar: _mul,
    aten.div.Tensor: _div,
    aten.div.Scalar: _div,
    aten.div.Tensor_mode: _div,
    aten.addcmul.default: _addcmul,
    aten.addcdiv.default: _addcdiv,
    aten.exp.default: _unary(torch.exp, lambda p, y, t: t * y),
    aten.log.default: _unary(torch.log, lambda p, y, t: t / p),
    aten.log1p.default: _unary(torch.log1p, lambda p, y, t: t / (1 + p)),
    aten.expm1.default: _unary(torch.expm1, lambda p, y, t: t * (y + 1)),
    aten.sin.default: _unary(torch.sin, lambda p, y, t: t * torch.cos(p)),
    aten.cos.default: _unary(torch.cos, lambda p, y, t: t * -torch.sin(p)),
    aten.sqrt.default: _unary(torch.sqrt, lambda p, y, t: t / (2 * y)),
    aten.rsqrt.default: _unary(torch.rsqrt, lambda p, y, t: t * (-0.5 * y * y * y)),
    aten.reciprocal.default: _unary(torch.reciprocal, lambda p, y, t: t * -(y * y)),
    aten.square.default: _unary(torch.square, lambda p, y, t: t * (2 * p)),
    aten.abs.default: _unary(torch.abs, lambda p, y, t: t * torch.sign(p)),
    aten.erf.default: _unary(torch.erf, lambda p, y, t: t * (2 / math.sqrt(math.pi) * torch.exp(-p * p))),
    aten.atan.default: _unary(torch.atan, lambda p, y, t: t / (1 + p * p)),
    aten.pow.Tensor_Scalar: _pow_scalar,
    aten.pow.Tensor_Tensor: _pow_tensor,
    aten.pow.Scalar: _pow_base,
    aten.clamp.default: _clamp,
    aten.clamp_min.default: lambda ctx, x, lo: _clamp(ctx, x, lo, None),
    aten.clamp_max.default: lambda ctx, x, hi: _clamp(ctx, x, None, hi),
    aten.hardtanh.default: lambda ctx, x, lo=-1.0, hi=1.0: _clamp(ctx, x, lo, hi),
    aten.where.self: _where,
    aten.masked_fill.Scalar: _masked_fill,
    aten.maximum.default: _maximum(torch.maximum),
    aten.minimum.default: _maximum(torch.minimum),
    **{op: _activation(op) for op in ACTIVATION_OPS},
    # reductions
    aten.sum.dim_IntList: _reduce(torch.sum),
    aten.mean.dim: _reduce(torch.mean),
    aten.sum.default: _reduce_all(torch.sum),
    aten.mean.default: _reduce_all(torch.mean),
    aten.var.correction: _var,
    aten.linalg_vector_norm.default: _vector_norm,
    aten.amax.default: _amax,
    aten.logsumexp.default: _logsumexp,
    aten.cumsum.default: _cumsum,
    # softmax, normalisations, attention, dropout
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.log_softmax.int: _log_softmax,
    aten._log_softmax.default: _log_softmax,
    aten.layer_norm.default: _layer_norm,
    aten.group_norm.default: _group_norm,
    aten.rms_norm.default: _rms_norm,
    aten.batch_norm.default: _batch_norm,
    aten.scaled_dot_product_attention.default: _sdpa,
    aten.dropout.default: _dropout,
    aten.native_dropout.default: _native_dropout,
    aten.feature_dropout.default: _feature_dropout,
}

# ops whose output carries no tangent whatever their input (run on the primals): piecewise
# constant, a copy of the shape or a draw of the same shape
NO_TANGENT = {aten.sign.default, aten.floor.default, aten.ceil.default, aten.round.default, aten.trunc.default,
              aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default, aten.full_like.default,
              aten.rand_like.default, aten.randn_like.default, aten.randint_like.default, aten.new_zeros.default,
              aten.new_ones.default, aten.new_empty.default, aten.new_full.default, aten.argmax.default,
              aten.argmin.default, aten.detach.default, aten.sym_size.int, aten.eq.Tensor, aten.eq.Scalar}

# in-place ops: the rule of their out-of-place op, the result rebound to the node (jvp_runner)
INPLACE = {}
for _op in list(RULES):
    if isinstance(_op, torch._ops.OpOverload):
        _name = _op._schema.name.split("::")[1]
        _inplace = getattr(getattr(aten, _name + "_", None), _op._overloadname, None)
        if _inplace is not None:
            INPLACE[_inplace] = _op
INPLACE[aten.copy_.default] = aten.copy.default

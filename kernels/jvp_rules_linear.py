"""Linear rules of owf_kernels.jvp (stage 2, jvp_rules.py has the table): ops linear in their dual
input (linear, convolutions, matmul and einsum with a constant operand, add, a product with a
constant) run once over the stacked H [1+T, ...], the 1+T rows merged into the op's batch (one
GEMM over (1+T)·B rows; the weights read once); a bias adds to the primal only. A product of two
dual operands is bilinear: ẏ = f(ȧ, b) + f(a, ḃ), the first term over a's stacked rows.
Without tangent_grad (ctx.stack False) the primal runs with autograd and the tangents under no_grad.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .jvp_dual import Dual, _full, _pad, is_dual, primal
from .jvp_layers import unstack
from .jvp_rules_shape import _merged


# Linear ops with a constant weight: one call over [x; ẋ], the bias on the primal only
def _with_bias(A: Dual, bias, shape_fn):
    """A = [a; ȧ] -> (a + b, ȧ): the bias shifts the primal only."""
    if bias is None:
        return A
    a, ad = A.P()
    return Dual(p=a + shape_fn(bias), t=ad)


def _linear_op(ctx, x, op, bias, bias_shape, batched_rank):
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

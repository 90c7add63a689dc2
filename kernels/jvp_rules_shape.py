"""Shape rules of owf_kernels.jvp (stage 2, jvp_rules.py has the table): ops that move or copy
values without arithmetic apply to the stacked H [1+T, *S], or to both halves of a pair, with their
dims shifted past the leading T (a view of H stays a view: no copy); ops on a batch (upsampling,
pooling, padding) run once over the 1+T rows merged into the batch dim; cat and stack give a
constant piece zero tangents.
"""
from __future__ import annotations

import torch

from .jvp_dual import Dual, _full, _nd, _pad, _zeros, is_dual, primal

aten = torch.ops.aten


# Shape ops: the same op on H, or on both halves of a pair, with the dims shifted past the T dim
def _shape_rule(op, shift):
    """shift(x_shape, lead, *args) -> args for the stacked/tangent tensor whose leading size is lead."""
    def rule(ctx, x, *args):
        if x.H is not None:
            return _wrap(op(x.H, *shift(x.H.shape[1:], x.H.shape[0], *args)))
        p, t = x.p, x.t
        return _wrap2(op(p, *args), op(t, *shift(p.shape, t.shape[0], *args)))
    return rule


def _wrap(out):
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


def _index(ctx, x, indices):
    """x[indices] (aten.index, None for a full slice) on H / the tangents with a None for the lead
    dim. Advanced indices separated by a slice (x[:, i, :, j]) put their broadcast dims first
    (numpy's rule), ahead of the lead dim too: [*I, 1+T, *rest] is moved back to [1+T, *I, *rest]."""
    at = [k for k, i in enumerate(indices) if i is not None]
    k = None
    if at and at[-1] - at[0] + 1 != len(at):
        k = len(torch.broadcast_shapes(*[indices[j].shape for j in at]))

    def on(h):
        out = aten.index(h, [None, *indices])
        return out if k is None else out.movedim(k, 0)
    if x.H is not None:
        return Dual(H=on(x.H))
    return Dual(p=aten.index(x.p, indices), t=on(x.t))


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
    return _shape_rule(aten.squeeze.dims, _squeeze_dims)(ctx, x, dims)


_TRANSPOSE = _shape_rule(aten.transpose.int, _transpose)


def _t_rule(ctx, x):
    return x if x.dim() < 2 else _TRANSPOSE(ctx, x, 0, 1)


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


# Ops on a batch: the 1+T (or T) rows merged into the batch dim
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
    return _cat(ctx, [_shape_rule(aten.unsqueeze.default, _unsqueeze)(ctx, x, dim % r) if is_dual(x) else primal(x).unsqueeze(dim % r)
                      for x in tensors], dim)


def _copy(ctx, dst, src, non_blocking=False):
    """dst.copy_(src) as a value: src, broadcast to dst's shape and cast to its dtype."""
    d = primal(dst)
    if not is_dual(src):
        return src.to(d.dtype).expand_as(d).clone()
    p, t = src.P()
    return Dual(p=p.to(d.dtype).expand_as(d).clone(), t=_full(_pad(t, src.dim(), d.dim()), d.shape).to(d.dtype).clone())


def _to_op(op):
    def rule(ctx, x, *args, **kwargs):
        if x.H is not None and ctx.stack:
            return Dual(H=op(x.H, *args, **kwargs))
        p, t = x.P()
        return Dual(p=op(p, *args, **kwargs), t=op(t, *args, **kwargs))
    return rule


def _to_copy(ctx, x, **kwargs):
    if x.H is not None and ctx.stack:
        return Dual(H=aten._to_copy(x.H, **kwargs))
    p, t = x.P()
    return Dual(p=aten._to_copy(p, **kwargs), t=aten._to_copy(t, **kwargs))


def _getitem(ctx, xs, i):
    return xs[i]

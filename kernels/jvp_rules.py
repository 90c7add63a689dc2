"""Stage 2 of owf_kernels.jvp: one stacked rule per ATen op (`RULES`), as torch-jet's operations table.
The rules live in jvp_rules_shape.py, jvp_rules_linear.py and jvp_rules_nonlinear.py; the values
they take in jvp_dual.py.

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
    SDPA:     attention_jvp.sdpa_jvp (sCM's Appendix F); without tangent_grad sdpa_with_detached_tangent
    dropout:  one mask m for the primal and every tangent: y = x m/(1-p), ẏ = ẋ m/(1-p)
    edges, as torch.func.jvp: clamp/hardtanh/relu6 ẏ = ẋ strictly inside (lo, hi), 0 at a bound;
              max(a, b) ẏ = ḃ + w (ȧ - ḃ), w = 1 / 0 / ½ at a tie; ‖0‖₂ has ẏ = 0
    x[i, :, j] (advanced indices apart): out [*I, *rest]; on H the index dims come first too,
              [*I, 1+T, *rest], and are moved behind the lead dim

With tangent_grad=False (ctx.stack False) every Dual stays a pair, each rule computes its primal
with autograd and its tangent under no_grad: the primal's graph is the plain forward's, and a
linear op runs twice (over B rows with autograd, over T·B rows without), so that backward neither
keeps the tangents' activations nor computes gradients for their rows.
"""
from __future__ import annotations

import math
import operator

import torch

from .jvp_dual import _nd, primal
from .jvp_rules_linear import (_add, _addcdiv, _addcmul, _addmm, _conv_rule, _convolution, _div, _einsum, _linear,
                               _matmul, _mm, _mul, _neg, _outer, _rsub, _sub)
from .jvp_rules_nonlinear import (ACTIVATION_TANGENTS, _activation, _amax, _batch_norm, _clamp, _cumsum, _dropout,
                                  _embedding, _feature_dropout, _group_norm, _layer_norm, _log_softmax, _logsumexp,
                                  _masked_fill, _max_pool2d, _maximum, _native_dropout, _pow_base, _pow_scalar,
                                  _pow_tensor, _reduce, _reduce_all, _rms_norm, _sdpa, _softmax, _unary, _var,
                                  _var_dim, _vector_norm, _where)
from .jvp_rules_shape import (_TRANSPOSE, _cat, _constant_pad, _copy, _detach, _dim_at, _dim_default0, _dims, _expand_rule,
                              _flatten, _gather, _getitem, _index, _merged_rule, _movedim, _pad_rule, _permute,
                              _repeat_rule, _roll, _same, _shape_rule, _sizes, _slice, _squeeze_all, _squeeze_dims,
                              _stack, _t_rule, _tile_rule, _to_copy, _to_op, _transpose, _unsqueeze)

aten = torch.ops.aten


# The table: aten op -> rule(ctx, *args) -> Dual (or a list of them; None: use the fallback)
_RESHAPE = _shape_rule(aten.reshape.default, _sizes)

RULES = {
    # shape ops
    # view as reshape: the stacked layout is the runner's choice (channels_last after a fused layer),
    # where the primal's own view would have been valid
    aten.view.default: _RESHAPE,
    aten.reshape.default: _RESHAPE,
    aten._unsafe_view.default: _RESHAPE,
    aten.expand.default: _expand_rule,
    aten.permute.default: _shape_rule(aten.permute.default, _permute),
    aten.transpose.int: _TRANSPOSE,
    aten.t.default: _t_rule,
    aten.mT.default: lambda ctx, x: _TRANSPOSE(ctx, x, -2, -1),
    aten.expand_as.default: lambda ctx, x, other: _expand_rule(ctx, x, list(primal(other).shape)),
    aten.reshape_as.default: lambda ctx, x, other: _RESHAPE(ctx, x, list(primal(other).shape)),
    aten.unsqueeze.default: _shape_rule(aten.unsqueeze.default, _unsqueeze),
    aten.squeeze.dim: _shape_rule(aten.squeeze.dim, lambda s, lead, d: (_nd(d, len(s)),)),
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
    aten.index.Tensor: _index,
    aten.constant_pad_nd.default: _constant_pad,
    aten.pad.default: _pad_rule,
    aten.to.dtype: _to_op(aten.to.dtype),
    aten.to.dtype_layout: _to_op(aten.to.dtype_layout),
    aten.to.device: _to_op(aten.to.device),
    aten._to_copy.default: _to_copy,
    aten.type_as.default: lambda ctx, x, other: _to_op(aten.to.dtype)(ctx, x, primal(other).dtype),
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
    aten.relu6.default: lambda ctx, x: _clamp(ctx, x, 0.0, 6.0),
    aten.where.self: _where,
    aten.masked_fill.Scalar: _masked_fill,
    aten.maximum.default: _maximum(torch.maximum),
    aten.minimum.default: _maximum(torch.minimum),
    **{op: _activation(op) for op in ACTIVATION_TANGENTS},
    # reductions
    aten.sum.dim_IntList: _reduce(torch.sum),
    aten.mean.dim: _reduce(torch.mean),
    aten.sum.default: _reduce_all(torch.sum),
    aten.mean.default: _reduce_all(torch.mean),
    aten.var.correction: _var,
    aten.var.dim: _var_dim,
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

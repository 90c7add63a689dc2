"""The layer kernels of owf_kernels.jvp's stacked runner: a linear op over the stacked batch, and
the layer epilogue (bias, BatchNorm, activation and their tangents) that the runner's fusion rule
(jvp_runner.py, "layer") calls after it.

Layout. The primal and its T tangents travel as ONE tensor H [1+T, B, *feat]: H[0] is the primal
h, H[1:] the tangents ḣ_t. A linear op (linear, conv2d, conv_transpose2d) is linear in its input,
so it runs once over the merged batch [(1+T)·B, *feat] with no bias: the weights are read once for
all 1+T rows, and the result is A = [a; ȧ] with a = op(h) and ȧ_t = op(ḣ_t).

The epilogue then takes A to the next H (per channel c; a: [B, C, *S], S the spatial dims):

    a      <- a + b                                          (the op's bias, primal rows only)
    BatchNorm, with batch statistics (train mode) over (B, *S):
        μ = mean a,  σ² = mean (a - μ)²,  r = (σ² + eps)^-½,  x̂ = (a - μ) r
        z  = γ x̂ + β
        ż_t = γ r ȧ_t                                         (per_sample: μ, r held constant)
        ż_t = γ r (ȧ_t - mean ȧ_t - x̂ mean(x̂ ȧ_t))             (batch: forward-mode AD through μ, σ²)
      with running statistics (eval mode): z = γ (a - μ_run) r_run + β, ż_t = γ r_run ȧ_t
    activation:   y = σ(z),   ẏ_t = σ'(z) ż_t

Here the epilogue is written in differentiable torch ops, so autograd gives every gradient (the
σ'' and BatchNorm-statistics terms included): the CPU path, and the oracle of the Triton epilogue
(jvp_epilogue_triton.py), which computes the same map in one kernel each way. Reads and writes of
`epilogue_torch`, for N = B·|S| elements per row and T tangents: the bias add reads and writes N;
the statistics read N once (one fused pass; their backward reads N and writes N); the
normalisation (one addcmul) reads and writes N; the tangent scale reads and writes T·N (batch mode
reads T·N twice more for its two means); the activation reads N and writes N, its tangent op reads
N + T·N and writes T·N; the final stack copies (1+T)·N. The op profile of the 28×28 DCGAN step
and the measurements behind these choices are in docs/jvp.md.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from typing import NamedTuple

BATCH_NORM_MODES = ("batch", "per_sample")


# ---------------------------------------------------------------------------------------------
# Activations: (z, ż) -> (y, ẏ) = (σ(z), σ'(z) ż), as differentiable torch ops (autograd then has σ'')
# ---------------------------------------------------------------------------------------------
# ẏ is formed by the aten op that PyTorch's own forward-mode rule for the activation uses (its
# "backward" op, σ'(z) ż in one pass, whose derivative autograd has), so it equals torch.func.jvp's
# tangent; z [B, ...] broadcasts over ż [T, B, ...]. ReLU and LeakyReLU pass z detached: σ'' = 0, and
# autograd would otherwise form a zero gradient the size of ż for it. SiLU keeps its formula
# (aten's silu_backward has no derivative): σ = z s, σ' = s (1 + z (1 - s)), s = sigmoid(z).
_aten = torch.ops.aten


def _with_result(f, tangent):
    # tangent(ż, y): the ops whose rule reads the result y = σ(z) (tanh, sigmoid)
    return lambda z, zd: (lambda y: (y, tangent(zd, y)))(f(z))


def _silu(z, zd):
    s = torch.sigmoid(z)
    return z * s, zd * (s * (1 + z * (1 - s)))


# module type -> function of (module) returning (z, ż) -> (σ(z), σ'(z) ż)
ACTIVATION_RULES = {
    nn.ReLU: lambda m: lambda z, zd: (torch.relu(z), _aten.threshold_backward(zd, z.detach(), 0)),
    nn.LeakyReLU: lambda m: lambda z, zd: (F.leaky_relu(z, m.negative_slope),
                                           _aten.leaky_relu_backward(zd, z.detach(), m.negative_slope, False)),
    nn.Tanh: lambda m: _with_result(torch.tanh, _aten.tanh_backward),
    nn.Sigmoid: lambda m: _with_result(torch.sigmoid, _aten.sigmoid_backward),
    # past the threshold nn.Softplus returns z itself, and softplus_backward gives σ' = 1 there
    nn.Softplus: lambda m: lambda z, zd: (F.softplus(z, m.beta, m.threshold),
                                          _aten.softplus_backward(zd, z, m.beta, m.threshold)),
    nn.SiLU: lambda m: _silu,
    nn.ELU: lambda m: lambda z, zd: (F.elu(z, m.alpha), _aten.elu_backward(zd, m.alpha, 1, 1, False, z)),
    # GELU: z expanded, not broadcast (CPU fp32/bf16 gelu_backward goes to oneDNN, which refuses unequal shapes)
    nn.GELU: lambda m: lambda z, zd: (F.gelu(z, approximate=m.approximate),
                                      _aten.gelu_backward(zd, z.expand_as(zd), approximate=m.approximate)),
}

# aten activation op (as a trace records it) -> the module it stands for, from the op's arguments:
# the fusion rule hands the epilogue a module, whose type picks the rule above and the Triton code
ACTIVATION_OPS = {
    _aten.relu.default: lambda x: nn.ReLU(),
    _aten.leaky_relu.default: lambda x, slope=0.01: nn.LeakyReLU(slope),
    _aten.tanh.default: lambda x: nn.Tanh(),
    _aten.sigmoid.default: lambda x: nn.Sigmoid(),
    _aten.softplus.default: lambda x, beta=1, threshold=20: nn.Softplus(beta, threshold),
    _aten.silu.default: lambda x: nn.SiLU(),
    _aten.elu.default: lambda x, alpha=1.0, scale=1, input_scale=1: nn.ELU(alpha) if scale == input_scale == 1 else None,
    _aten.gelu.default: lambda x, approximate="none": nn.GELU(approximate),
}


# ---------------------------------------------------------------------------------------------
# Linear ops over the stacked batch
# ---------------------------------------------------------------------------------------------
class LinearOp(NamedTuple):
    """A linear op as a trace records it (aten.linear / conv2d / conv_transpose2d), without its bias."""
    kind: str                      # "linear" | "conv" | "conv_transpose"
    weight: torch.Tensor           # linear [N, K]; conv [O, C/g, kh, kw]; conv_transpose [C, O/g, kh, kw]
    stride: tuple = (1, 1)
    padding: tuple | str = (0, 0)
    output_padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1


def linear_op(op: LinearOp, H: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """A = op(H) without the bias: H [1+T, B, *feat] -> [1+T, B, *feat'], one call over the merged
    batch. channels_last: a convolution's merged input is made channels_last first (a no-op when the
    previous layer's epilogue kept it so), and its output then is too (see epilogue_torch)."""
    if op.kind == "linear":
        return F.linear(H, op.weight)                         # acts on the last dim: no merge needed
    Hm = H.reshape(-1, *H.shape[2:])
    projection = _is_projection(op, Hm)
    if channels_last and Hm.dim() == 4 and not projection:
        Hm = Hm.contiguous(memory_format=torch.channels_last)
    if projection:
        # on a 1x1 input with no padding a transposed convolution is a GEMM: out[b, o, i, j] =
        # Σ_c x[b, c] W[c, o, i, j] (a DCGAN generator's first layer); CPU: fwd+bwd at [128, 784] ->
        # [96, 7, 7] took 35 ms as a GEMM, 54 ms as conv_transpose2d
        C, O, kh, kw = op.weight.shape
        A = (Hm.reshape(-1, C) @ op.weight.reshape(C, O * kh * kw)).view(-1, O, kh, kw)
    elif op.kind == "conv":
        A = F.conv2d(Hm, op.weight, None, op.stride, op.padding, op.dilation, op.groups)
    elif channels_last and _one_channel_form(op, Hm):
        A = _ConvTransposeToOneChannel.apply(Hm, op.weight, op.stride, op.padding, op.output_padding, op.dilation)
    else:
        A = F.conv_transpose2d(Hm, op.weight, None, op.stride, op.padding, op.output_padding, op.groups, op.dilation)
    return A.view(H.shape[0], H.shape[1], *A.shape[1:])


class _ConvTransposeToOneChannel(torch.autograd.Function):
    """conv_transpose2d(x, W) to one output channel, x [N, C, H, W] channels_last, W [C, 1, kh, kw]:
    forward as the GEMM it is per pixel and col2im, cols [N, H·W, kh·kw] = x_NHWC W, y = fold(cols)
    (each output pixel the sum of the cols that land on it); backward the native convolution
    backward (g_x = conv2d(g, W), g_W = Σ x ⊗ unfold(g)), whose own derivative autograd has. On the
    CPU oneDNN's transposed convolution to one channel is slow: the 28×28 generator's last layer
    (48 -> 1, 14×14 -> 28×28, over the 128 stacked rows, channels_last, 2 threads) took 4.8 ms
    forward and 6.8 ms with its backward, this 2.1 and 4.1 ms; to 3 or 8 channels it gains nothing
    or loses (docs/jvp.md)."""

    @staticmethod
    def forward(ctx, x, w, stride, padding, output_padding, dilation):
        ctx.save_for_backward(x, w)
        ctx.conv = (stride, padding, dilation, output_padding)
        N, C, H, W = x.shape
        kh, kw = w.shape[2:]
        size = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1
                for n, s, p, d, k, op in zip((H, W), stride, padding, dilation, (kh, kw), output_padding)]
        cols = (x.permute(0, 2, 3, 1).reshape(N * H * W, C) @ w.reshape(C, kh * kw)).view(N, H * W, kh * kw)
        y = F.fold(cols.transpose(1, 2), size, (kh, kw), dilation, padding, stride)
        # col2im's result is a view of a buffer the size of cols (kh·kw times y's on the 28×28 layer),
        # which the next op's saved tensors would keep alive: a copy of y frees it
        return y if y.untyped_storage().nbytes() <= y.numel() * y.element_size() else y.clone()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        stride, padding, dilation, output_padding = ctx.conv
        gx, gw, _ = torch.ops.aten.convolution_backward(g, x, w, None, stride, padding, dilation, True, output_padding,
                                                        1, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return gx, gw, None, None, None, None


def _one_channel_form(op: LinearOp, x: torch.Tensor) -> bool:
    """Whether _ConvTransposeToOneChannel takes op on x: one output channel, output_padding below the
    stride (col2im's block count; PyTorch also allows it up to the dilation), and plain autograd (the
    Function has no forward-mode or autocast rule: a dual tensor or CPU autocast takes the native op)."""
    return (op.groups == 1 and op.weight.shape[1] == 1 and all(p < s for p, s in zip(op.output_padding, op.stride))
            and not torch.is_autocast_enabled(x.device.type)
            and all(fwAD.unpack_dual(t).tangent is None for t in (x, op.weight)))


def _is_projection(op: LinearOp, x: torch.Tensor) -> bool:
    return (op.kind == "conv_transpose" and x.shape[-2:] == (1, 1) and op.groups == 1
            and tuple(op.padding) == (0, 0) and tuple(op.output_padding) == (0, 0) and tuple(op.dilation) == (1, 1))


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------
class BatchNormArgs(NamedTuple):
    """aten.batch_norm's arguments, as a trace records them (nn.BatchNorm has resolved them)."""
    weight: torch.Tensor | None      # γ [C]
    bias: torch.Tensor | None        # β [C]
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    training: bool                   # batch statistics (train mode, or no running statistics)
    momentum: float                  # the running statistics' update factor (1/n for a cumulative average)
    eps: float
    name: str = "BatchNorm"


def batch_norm_args(m: nn.Module, update: bool = True) -> BatchNormArgs:
    """The arguments nn.BatchNorm `m` passes to F.batch_norm, with its own bookkeeping when update
    (num_batches_tracked + 1 in train mode; momentum=None is the cumulative average 1/n)."""
    momentum = 0.0 if m.momentum is None else m.momentum
    if m.training and m.track_running_stats and m.num_batches_tracked is not None and update:
        m.num_batches_tracked.add_(1)
        momentum = 1.0 / float(m.num_batches_tracked) if m.momentum is None else m.momentum
    track = not m.training or m.track_running_stats
    return BatchNormArgs(m.weight, m.bias, m.running_mean if track else None, m.running_var if track else None,
                         m.training or m.running_mean is None, momentum, m.eps, f"{type(m).__name__}({m.num_features})")


class _BatchStats(torch.autograd.Function):
    """(μ, σ²) [C] of a [B, C, *S] over B and S (σ² biased), in torch.batch_norm_update_stats' one
    fused pass (nn.BatchNorm's own statistics kernel); backward g_a = (g_μ + 2 g_σ² (a - μ)) / N,
    N = B·|S|, in torch ops (so differentiable again). On the CPU ([64, 48, 14, 14], 2 threads) the
    forward took 0.55 ms, against 1.29 for mean then mean (a - μ)² and 1.75 for torch.var_mean."""

    @staticmethod
    def forward(ctx, a):
        # in a's dtype: on CUDA a bf16/fp16 input's statistics come back in float32 (its accumulation type)
        mu, var = (t.to(a.dtype) for t in torch.batch_norm_update_stats(a, None, None, 0.0))
        ctx.save_for_backward(a, mu)
        return mu, var

    @staticmethod
    def backward(ctx, g_mu, g_var):             # autograd passes zeros for an output the loss does not read
        a, mu = ctx.saved_tensors
        shape = (1, -1) + (1,) * (a.dim() - 2)
        n = a.numel() // a.shape[1]
        return torch.addcmul((g_mu / n).view(shape), a - mu.view(shape), (g_var * (2 / n)).view(shape))


def batch_norm_stats(bn, a: torch.Tensor, update: bool, shift: torch.Tensor | None = None):
    """(μ, r, batch) per channel for BatchNorm `bn` (BatchNormArgs, or an nn.BatchNorm module) on the
    primal a [B, C, *S]: mean and (σ² + eps)^-½ broadcastable to a, and whether they are the
    batch's (train mode, or no running statistics) rather than the running ones. update=True
    updates the running statistics once, from the primal batch, exactly as nn.BatchNorm does
    (unbiased variance, bn.momentum). shift [C]: a bias not yet added to a (the Triton epilogue's);
    the statistics are then those of a + shift (its mean is μ_a + shift)."""
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        bn = batch_norm_args(bn, update)
    C = a.shape[1]
    shape = (1, C) + (1,) * (a.dim() - 2)
    if not bn.training:
        mu, var = bn.running_mean, bn.running_var
        return mu.view(shape), torch.rsqrt(var.view(shape) + bn.eps), False
    count = a.numel() // C
    if count < 2:
        raise ValueError(f"{bn.name} in train mode got {count} value per channel (input "
                         f"{tuple(a.shape)}): batch statistics need at least 2")
    mu, var = (t.view(shape) for t in _BatchStats.apply(a))
    if shift is not None:
        mu = mu + shift.view(shape)
    if update and bn.running_mean is not None:
        with torch.no_grad():
            m = bn.momentum
            bn.running_mean.mul_(1 - m).add_(mu.detach().flatten(), alpha=m)
            bn.running_var.mul_(1 - m).add_(var.detach().flatten(), alpha=m * count / (count - 1))
    return mu, torch.rsqrt(var + bn.eps), True


def unstack(H: torch.Tensor):
    """H [1+T, B, ...] -> (H[0], H[1:]) as views of one split, whose backward is one cat (the two
    indexes' backwards would each write their gradient into a zero-filled copy of H, then be added).
    The split is of the merged batch [(1+T)·B, ...], so that the cat keeps a channels_last gradient
    channels_last (a cat of 5-D [1, B, ...] and [T, B, ...] pieces returns a contiguous one)."""
    B = H.shape[1]
    h, hd = H.flatten(0, 1).split([B, H.shape[0] * B - B])
    return h, hd.view(H.shape[0] - 1, *h.shape)


def epilogue_torch(A: torch.Tensor, bias, bn, act, bn_mode: str, update_stats: bool,
                   bias_last: bool = False) -> torch.Tensor:
    """A = [a; ȧ] [1+T, B, C, *S] -> the next H = [y; ẏ] (module docstring's formulas). bias [C] or
    None, on dim 1 of a (a convolution's channels), or on its last dim with bias_last (a Linear's
    features, whatever dims lead); bn BatchNormArgs (or an nn.BatchNorm module) or None; act a function (z, ż) -> (σ(z),
    σ'(z) ż) (ACTIVATION_RULES) or None."""
    if bias is None and bn is None and act is None:
        return A
    a, ad = unstack(A)
    C = a.shape[1]
    shape = (1, C) + (1,) * (a.dim() - 2)
    if bias is not None:
        a = a + (bias if bias_last else bias.view(shape))
    if bn is not None:
        mu, r, batch = batch_norm_stats(bn, a, update_stats)
        scale = r if bn.weight is None else bn.weight.view(shape) * r                 # γ r
        if batch and bn_mode == "batch":                     # the tangent of μ and σ², per tangent t
            xhat = (a - mu) * r
            dims = (1,) + tuple(range(3, ad.dim()))              # ȧ [T, B, C, *S]: over B and S
            ad = ad - ad.mean(dims, keepdim=True) - xhat * (xhat * ad).mean(dims, keepdim=True)
        # z = γ (a - μ) r + β as a γr + (β - μ γr): one pass, the form ATen's own CPU BatchNorm computes
        shift = -mu * scale if bn.bias is None else bn.bias.view(shape) - mu * scale
        a = torch.addcmul(shift, a, scale)
        ad = ad * scale
    if act is not None:
        a, ad = act(a, ad)
    # stacked on the merged batch, so that a channels_last a and ȧ give a channels_last H (the
    # elementwise ops above keep their input's layout; a cat of the 5-D [1, B, ...] and [T, B, ...]
    # would return a contiguous H, and the next convolution would copy it back)
    return torch.cat([a, ad.flatten(0, 1)]).view(A.shape[0], *a.shape)

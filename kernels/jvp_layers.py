"""The rule table of owf_kernels.jvp: one small forward+tangent rule per module type, on the
stacked layout, and the layer epilogue they share.

Layout. Between layers the primal and its T tangents travel as ONE tensor H [1+T, B, *feat]: H[0]
is the primal h, H[1:] the tangents ḣ_t. A linear op (Linear, Conv2d, ConvTranspose2d) is linear
in its input, so it runs once over the merged batch [(1+T)·B, *feat] with no bias: the weights are
read once for all 1+T rows, and the result is A = [a; ȧ] with a = op(h) and ȧ_t = op(ḣ_t).

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

LINEAR_OPS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# modules that act on each sample's shape only (or not at all): applied to the merged batch
SHAPE_OPS = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


def linear_op(m: nn.Module, H: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """A = op(H) without the bias: H [1+T, B, *feat] -> [1+T, B, *feat'], one call over the merged
    batch. channels_last: a convolution's merged input is made channels_last first (a no-op when the
    previous layer's epilogue kept it so), and its output then is too (see epilogue_torch)."""
    if isinstance(m, nn.Linear):
        return F.linear(H, m.weight)                          # acts on the last dim: no merge needed
    Hm = H.reshape(-1, *H.shape[2:])
    projection = _is_projection(m, Hm)
    if channels_last and Hm.dim() == 4 and not projection:
        Hm = Hm.contiguous(memory_format=torch.channels_last)
    if projection:
        # on a 1x1 input with no padding a transposed convolution is a GEMM: out[b, o, i, j] =
        # Σ_c x[b, c] W[c, o, i, j] (a DCGAN generator's first layer); CPU: fwd+bwd at [128, 784] ->
        # [96, 7, 7] took 35 ms as a GEMM, 54 ms as conv_transpose2d
        C, O, kh, kw = m.weight.shape
        A = (Hm.reshape(-1, C) @ m.weight.reshape(C, O * kh * kw)).view(-1, O, kh, kw)
    elif isinstance(m, nn.Conv2d):
        A = F.conv2d(Hm, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
    elif channels_last and _one_channel_form(m, Hm):
        A = _ConvTransposeToOneChannel.apply(Hm, m.weight, m.stride, m.padding, m.output_padding, m.dilation)
    else:
        A = F.conv_transpose2d(Hm, m.weight, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
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


def _one_channel_form(m: nn.ConvTranspose2d, x: torch.Tensor) -> bool:
    """Whether _ConvTransposeToOneChannel takes m on x: one output channel, output_padding below the
    stride (col2im's block count; PyTorch also allows it up to the dilation), and plain autograd (the
    Function has no forward-mode or autocast rule: a dual tensor or CPU autocast takes the native op)."""
    return (m.out_channels == 1 and all(op < s for op, s in zip(m.output_padding, m.stride))
            and not torch.is_autocast_enabled(x.device.type)
            and all(fwAD.unpack_dual(t).tangent is None for t in (x, m.weight)))


def _is_projection(m: nn.Module, x: torch.Tensor) -> bool:
    return (isinstance(m, nn.ConvTranspose2d) and x.shape[-2:] == (1, 1) and m.groups == 1 and tuple(m.padding) == (0, 0)
            and tuple(m.output_padding) == (0, 0) and tuple(m.dilation) == (1, 1))


def fused_rule_problem(m: nn.Module) -> str | None:
    """Why module m cannot take the fused path, or None when it can (its type has a rule here)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r}"
    if isinstance(m, nn.Conv2d) and isinstance(m.padding, str):
        return None                                           # 'same' / 'valid': F.conv2d takes them
    if isinstance(m, nn.Dropout) and m.training and m.p > 0:
        return "train-mode Dropout"
    if (isinstance(m, nn.Flatten) and m.start_dim == 0) or (isinstance(m, nn.Unflatten) and m.dim == 0):
        return "it reshapes the batch dimension"
    if isinstance(m, LINEAR_OPS + BATCH_NORMS + SHAPE_OPS) or type(m) in ACTIVATION_RULES:
        return None
    return "no rule for its type"


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


def batch_norm_stats(bn: nn.Module, a: torch.Tensor, update: bool, shift: torch.Tensor | None = None):
    """(μ, r, batch) per channel for BatchNorm `bn` on the primal a [B, C, *S]: mean and
    (σ² + eps)^-½ broadcastable to a, and whether they are the batch's (train mode, or no running
    statistics) rather than the running ones. update=True updates the running statistics once,
    from the primal batch, exactly as nn.BatchNorm does (unbiased variance, momentum, or the
    cumulative average when momentum is None). shift [C]: a bias not yet added to a (the Triton
    epilogue's); the statistics are then those of a + shift (its mean is μ_a + shift)."""
    C = a.shape[1]
    shape = (1, C) + (1,) * (a.dim() - 2)
    batch = bn.training or bn.running_mean is None
    if not batch:
        mu, var = bn.running_mean, bn.running_var
        return mu.view(shape), torch.rsqrt(var.view(shape) + bn.eps), False
    count = a.numel() // C
    if count < 2:
        raise ValueError(f"{type(bn).__name__}({C}) in train mode got {count} value per channel (input "
                         f"{tuple(a.shape)}): batch statistics need at least 2")
    mu, var = (t.view(shape) for t in _BatchStats.apply(a))
    if shift is not None:
        mu = mu + shift.view(shape)
    if update and bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
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
    features, whatever dims lead); bn a BatchNorm module or None; act a function (z, ż) -> (σ(z),
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

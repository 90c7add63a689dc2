"""The Triton epilogue of owf_kernels.jvp's layers (the math and its torch reference, the oracle, are
`epilogue_torch` in jvp_layers.py; shapes there).

The bias, BatchNorm and the activation of a layer, with their tangents, reduce per channel c to

    z   = a s_c + h_c                      y   = σ(z)
    ż_t = ȧ_t s_c + k0_tc + k1_tc a        ẏ_t = σ'(z) ż_t

with coefficients (s, h [C]; k0, k1 [T, C]) computed in torch from the parameters and the batch
statistics (`coefficients`; a bias only shifts the mean, so the statistics are taken on a as it is):
    no BatchNorm:        s = 1,       h = b,                             k = 0
    running statistics:  s = γ r_run, h = β + (b - μ_run) s,             k = 0
    batch statistics:    s = γ r,     h = β + (b - μ) s = β - μ_a s,     k = 0 (per_sample), and "batch":
        ż_t = s (ȧ_t - m1_t - x̂ m2_t), x̂ = (a - μ_a) r, m1_t = mean ȧ_t, m2_t = mean(x̂ ȧ_t)
              = r (mean(a ȧ_t) - μ_a m1_t):   k1_t = -s r m2_t,  k0_t = -s m1_t - k1_t μ_a
    (μ_a, σ² over (B, *S) of a; r = (σ² + eps)^-½; means over (B, *S)).

_Epilogue is one autograd node for that elementwise map, a function of (A, s, h, k0, k1); autograd
takes the coefficients' gradients back to b, γ, β and through the statistics to A (small torch ops).

Forward: ONE launch reads A = [a; ȧ] once and writes the next layer's stacked input H = [y; ẏ]
[1+T, B, C, *S] directly (no torch.cat). Each program owns BLOCK_R rows of the B·C (b, c) rows and
loops over the S columns; for each element it computes z, σ, σ' once and then streams the T
tangents. Reads (1+T)·N, writes (1+T)·N (N = B·C·|S|); the statistics before it read a once
(jvp_layers.batch_norm_stats: one fused pass) and, for "batch", ȧ twice (its mean and mean(a ȧ_t)).

Backward: ONE launch reads A and gH = [gy; gẏ] and writes g_A = [g_a; g_ȧ] with
    g_ż_t = gẏ_t σ'(z),     g_ȧ_t = g_ż_t s,
    g_z   = gy σ'(z) + σ''(z) Σ_t gẏ_t ż_t,     g_a = g_z s + Σ_t g_ż_t k1_t,
and per (b, c) row partial sums of the coefficients' gradients, summed over b in torch (in a fixed
order: no atomics, so the result is deterministic):
    g_h = Σ g_z,  g_s = Σ (g_z a + Σ_t g_ż_t ȧ_t),  g_k0_t = Σ g_ż_t,  g_k1_t = Σ g_ż_t a.
Saved for backward: A and the coefficients (the torch epilogue keeps several N-sized tensors).

Activations (code, p1, p2): identity, ReLU, LeakyReLU (p1 slope), Tanh, Sigmoid, Softplus (p1 β, p2
threshold), SiLU, ELU (p1 α); σ'' as the table in `_act`. GELU has no Triton rule (no erf without
libdevice in the interpreter): its layers take the torch epilogue.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import triton
import triton.language as tl

from .backend import first_order, interpreting
from .jvp_layers import batch_norm_stats

ACT_CODES = {type(None): 0, nn.ReLU: 1, nn.LeakyReLU: 2, nn.Tanh: 3, nn.Sigmoid: 4, nn.Softplus: 5, nn.SiLU: 6,
             nn.ELU: 7}


def act_params(act: nn.Module | None):
    """(code, p1, p2) of an activation module, or None if the Triton epilogue has no rule for it."""
    code = ACT_CODES.get(type(act))
    if code is None:
        return None
    if isinstance(act, nn.LeakyReLU):
        return code, float(act.negative_slope), 0.0
    if isinstance(act, nn.Softplus):
        return code, float(act.beta), float(act.threshold)
    if isinstance(act, nn.ELU):
        return code, float(act.alpha), 0.0
    return code, 0.0, 0.0


@triton.jit
def _act(z, ACT: tl.constexpr, p1, p2):
    """y = σ(z), d1 = σ'(z), d2 = σ''(z)."""
    zero = tl.zeros(z.shape, z.dtype)
    if ACT == 0:      # identity
        y = z
        d1 = zero + 1.0
        d2 = zero
    elif ACT == 1:    # relu
        y = tl.maximum(z, 0.0)
        d1 = tl.where(z > 0, 1.0, 0.0).to(z.dtype)
        d2 = zero
    elif ACT == 2:    # leaky_relu, slope p1
        y = tl.where(z > 0, z, z * p1)
        d1 = tl.where(z > 0, zero + 1.0, zero + p1)
        d2 = zero
    elif ACT == 3:    # tanh = 2 sigmoid(2z) - 1;  σ' = 1 - y²;  σ'' = -2 y σ'
        y = 2.0 * tl.sigmoid(2.0 * z) - 1.0
        d1 = 1.0 - y * y
        d2 = -2.0 * y * d1
    elif ACT == 4:    # sigmoid;  σ' = y (1 - y);  σ'' = σ' (1 - 2y)
        y = tl.sigmoid(z)
        d1 = y * (1.0 - y)
        d2 = d1 * (1.0 - 2.0 * y)
    elif ACT == 5:    # softplus, β = p1: (max(βz, 0) + log(1 + e^-|βz|)) / β, and z where βz > p2;
        bz = z * p1   # σ' = sigmoid(βz) (1 there), σ'' = β σ' (1 - σ') (0 there)
        s = tl.sigmoid(bz)
        past = bz > p2
        y = tl.where(past, z, (tl.maximum(bz, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(bz)))) / p1)
        d1 = tl.where(past, 1.0, s).to(z.dtype)
        d2 = tl.where(past, 0.0, p1 * s * (1.0 - s)).to(z.dtype)
    elif ACT == 6:    # silu = z s, s = sigmoid(z);  σ' = s (1 + z (1 - s));  σ'' = s (1 - s) (2 + z (1 - 2s))
        s = tl.sigmoid(z)
        y = z * s
        d1 = s * (1.0 + z * (1.0 - s))
        d2 = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    else:             # elu, α = p1: z above 0, α (e^z - 1) below;  σ' = σ'' = α e^z below (1, 0 above)
        e = p1 * tl.exp(tl.minimum(z, 0.0))
        y = tl.where(z > 0, z, e - p1)
        d1 = tl.where(z > 0, 1.0, e).to(z.dtype)
        d2 = tl.where(z > 0, 0.0, e).to(z.dtype)
    return y, d1, d2


@triton.jit
def _rows(s_ptr, h_ptr, R, C, cdt: tl.constexpr, BLOCK_R: tl.constexpr):
    """This program's rows (b, c) of the B·C rows of a [B, C, S] slice: row ids, channel, mask, and
    the rows' s_c and h_c as [BLOCK_R, 1]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c, row_ok = rows % C, rows < R
    return (rows, c, row_ok, tl.load(s_ptr + c, mask=row_ok, other=0.0).to(cdt)[:, None],
            tl.load(h_ptr + c, mask=row_ok, other=0.0).to(cdt)[:, None])


@triton.jit
def _columns(rows, row_ok, s0, S, BLOCK_S: tl.constexpr):
    """The [BLOCK_R, BLOCK_S] chunk of columns s0.. of these rows: mask and int64 offsets in a slot."""
    cols = s0 + tl.arange(0, BLOCK_S)
    return row_ok[:, None] & (cols < S)[None, :], rows[:, None].to(tl.int64) * S + cols[None, :]


@triton.jit
def _per_tc(ptr, t, C, c, row_ok, cdt: tl.constexpr):
    """k[t, c] of a [T, C] coefficient for these rows, as [BLOCK_R, 1]."""
    return tl.load(ptr + t * C + c, mask=row_ok, other=0.0).to(cdt)[:, None]


@triton.jit
def _scalar(p, cdt: tl.constexpr):
    """An activation parameter in the compute dtype. The kernels take p1, p2 as float64 arguments: a
    Python float launches as an fp32 one, and LeakyReLU(0.3)'s slope in fp32 is 1e-8 off, which a
    float64 network cannot afford (the H200's pytest, 2026-12-04). The interpreter passes the Python
    float itself, which takes the dtype of the tensor it meets (tl.cast would round it to fp32 first)."""
    return (p + tl.zeros((), cdt)).to(cdt)


@triton.jit
def _epilogue_fwd_kernel(A_ptr, s_ptr, h_ptr, k0_ptr, k1_ptr, H_ptr, R, C, S, RS, T,
                         p1: tl.float64, p2: tl.float64,
                         ACT: tl.constexpr, HAS_K: tl.constexpr, cdt: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    rows, c, row_ok, s_c, h_c = _rows(s_ptr, h_ptr, R, C, cdt, BLOCK_R)
    for s0 in range(0, S, BLOCK_S):
        mask, offs = _columns(rows, row_ok, s0, S, BLOCK_S)
        a = tl.load(A_ptr + offs, mask=mask, other=0.0).to(cdt)
        y, d1, d2 = _act(a * s_c + h_c, ACT, _scalar(p1, cdt), _scalar(p2, cdt))
        tl.store(H_ptr + offs, y.to(H_ptr.dtype.element_ty), mask=mask)
        o = offs                                     # int64; RS = R·S elements per slot of [1+T, B, C, S]
        for t in range(T):
            o += RS
            zd = tl.load(A_ptr + o, mask=mask, other=0.0).to(cdt) * s_c
            if HAS_K:
                zd += _per_tc(k0_ptr, t, C, c, row_ok, cdt) + _per_tc(k1_ptr, t, C, c, row_ok, cdt) * a
            tl.store(H_ptr + o, (d1 * zd).to(H_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _epilogue_bwd_kernel(A_ptr, G_ptr, s_ptr, h_ptr, k0_ptr, k1_ptr, GA_ptr, P_ptr, R, C, S, RS, T,
                         p1: tl.float64, p2: tl.float64, ACT: tl.constexpr, HAS_K: tl.constexpr, cdt: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    # P [2 + 2T, R]: per row, g_h, g_s, then g_k0_t (T rows), g_k1_t (T rows)
    rows, c, row_ok, s_c, h_c = _rows(s_ptr, h_ptr, R, C, cdt, BLOCK_R)
    acc_h = tl.zeros((BLOCK_R,), cdt)
    acc_s = tl.zeros((BLOCK_R,), cdt)
    for s0 in range(0, S, BLOCK_S):
        mask, offs = _columns(rows, row_ok, s0, S, BLOCK_S)
        a = tl.load(A_ptr + offs, mask=mask, other=0.0).to(cdt)
        y, d1, d2 = _act(a * s_c + h_c, ACT, _scalar(p1, cdt), _scalar(p2, cdt))
        curv = tl.zeros(a.shape, cdt)                # Σ_t gẏ_t ż_t
        g_a = tl.zeros(a.shape, cdt)                 # Σ_t g_ż_t k1_t
        o = offs
        for t in range(T):
            o += RS
            ad = tl.load(A_ptr + o, mask=mask, other=0.0).to(cdt)
            gyd = tl.load(G_ptr + o, mask=mask, other=0.0).to(cdt)
            zd = ad * s_c
            gzd = gyd * d1
            if HAS_K:
                k1 = _per_tc(k1_ptr, t, C, c, row_ok, cdt)
                zd += _per_tc(k0_ptr, t, C, c, row_ok, cdt) + k1 * a
                g_a += gzd * k1
                # g_k0_t, g_k1_t: accumulated in P over the S chunks (each row is this program's alone)
                pk0 = P_ptr + (2 + t) * R + rows
                pk1 = P_ptr + (2 + T + t) * R + rows
                tl.store(pk0, tl.load(pk0, mask=row_ok, other=0.0) + tl.sum(gzd, axis=1), mask=row_ok)
                tl.store(pk1, tl.load(pk1, mask=row_ok, other=0.0) + tl.sum(gzd * a, axis=1), mask=row_ok)
            curv += gyd * zd
            acc_s += tl.sum(gzd * ad, axis=1)
            tl.store(GA_ptr + o, (gzd * s_c).to(GA_ptr.dtype.element_ty), mask=mask)
        gy = tl.load(G_ptr + offs, mask=mask, other=0.0).to(cdt)
        gz = gy * d1 + d2 * curv
        gz = tl.where(mask, gz, 0.0)
        acc_h += tl.sum(gz, axis=1)
        acc_s += tl.sum(gz * a, axis=1)
        tl.store(GA_ptr + offs, (gz * s_c + g_a).to(GA_ptr.dtype.element_ty), mask=mask)
    tl.store(P_ptr + rows, acc_h, mask=row_ok)
    tl.store(P_ptr + R + rows, acc_s, mask=row_ok)


def _compute_dtype(A):
    """The kernels' arithmetic: float64 for float64 tensors, else float32 (bf16 and fp16 loaded and cast at once)."""
    return tl.float64 if A.dtype == torch.float64 else tl.float32


def _blocks(S: int):
    BLOCK_S = min(triton.next_power_of_2(S), 16 if interpreting() else 256)
    BLOCK_R = max(16 if interpreting() else 1024 // BLOCK_S, 1)
    return BLOCK_R, BLOCK_S


class _Epilogue(torch.autograd.Function):
    """(A [1+T, B, C, S], s, h [C], k0, k1 [T, C] or None) -> H [1+T, B, C, S] (module docstring)."""

    @staticmethod
    def forward(ctx, A, s, h, k0, k1, act):
        T1, B, C, S = A.shape
        A = A.contiguous()
        H = torch.empty_like(A)
        has_k = k0 is not None
        ctx.dtype = s.dtype
        cdt = torch.float64 if A.dtype == torch.float64 else torch.float32      # coefficients in fp32 for bf16 A
        s, h = s.to(cdt).contiguous(), h.to(cdt).contiguous()
        k0c, k1c = (k0.to(cdt).contiguous(), k1.to(cdt).contiguous()) if has_k else (s, s)
        BLOCK_R, BLOCK_S = _blocks(S)
        code, p1, p2 = act
        _epilogue_fwd_kernel[(triton.cdiv(B * C, BLOCK_R),)](
            A, s, h, k0c, k1c, H, B * C, C, S, B * C * S, T1 - 1, p1, p2,
            ACT=code, HAS_K=has_k, cdt=_compute_dtype(A), BLOCK_R=BLOCK_R, BLOCK_S=BLOCK_S)
        ctx.save_for_backward(A, s, h, k0c, k1c)
        ctx.act, ctx.has_k = act, has_k
        return H

    @staticmethod
    @first_order
    def backward(ctx, G):
        A, s, h, k0, k1 = ctx.saved_tensors
        T1, B, C, S = A.shape
        T = T1 - 1
        G = G.contiguous()
        GA = torch.empty_like(A)
        P = torch.zeros((2 + 2 * T, B * C), dtype=s.dtype, device=A.device)
        BLOCK_R, BLOCK_S = _blocks(S)
        code, p1, p2 = ctx.act
        _epilogue_bwd_kernel[(triton.cdiv(B * C, BLOCK_R),)](
            A, G, s, h, k0, k1, GA, P, B * C, C, S, B * C * S, T, p1, p2,
            ACT=code, HAS_K=ctx.has_k, cdt=_compute_dtype(A), BLOCK_R=BLOCK_R, BLOCK_S=BLOCK_S)
        P = P.view(2 + 2 * T, B, C).sum(1)          # over b, in a fixed order
        P = P.to(ctx.dtype)
        g_h, g_s = P[0], P[1]
        g_k0, g_k1 = (P[2:2 + T], P[2 + T:]) if ctx.has_k else (None, None)
        return GA, g_s, g_h, g_k0, g_k1, None


def coefficients(a: torch.Tensor, ad: torch.Tensor, bias, bn, bn_mode: str, update_stats: bool):
    """(s, h, k0, k1) of the module docstring from a [B, C, S], ȧ [T, B, C, S] (differentiable torch
    ops; k0 = k1 = None unless "batch" mode with batch statistics). update_stats: nn.BatchNorm's
    running-statistics update, once, from the primal (a + b)."""
    C = a.shape[1]
    b = bias if bias is not None else a.new_zeros(C)
    if bn is None:
        return torch.ones_like(b), b, None, None
    gamma = bn.weight if bn.weight is not None else a.new_ones(C)
    beta = bn.bias if bn.bias is not None else a.new_zeros(C)
    # μ: the mean of a + b (batch) or the running mean; b cancels in h with batch statistics, but
    # stays in the graph (a zero gradient, as epilogue_torch gives it, not None: Adam treats them apart)
    mu, r, batch = batch_norm_stats(bn, a, update_stats, shift=b)
    mu, r = mu.view(C), r.view(C)
    s = gamma * r
    h = beta + (b - mu) * s
    if not (batch and bn_mode == "batch"):
        return s, h, None, None
    mu_a = mu - b
    m1 = ad.mean((1, 3))                                           # [T, C]
    m2 = r * (torch.einsum("bcs,tbcs->tc", a, ad) / (a.numel() // C) - mu_a * m1)
    k1 = -s * r * m2
    return s, h, -s * m1 - k1 * mu_a, k1


def epilogue_triton(A: torch.Tensor, bias, bn, act_module, bn_mode: str, update_stats: bool,
                    bias_last: bool = False) -> torch.Tensor:
    """epilogue_torch's contract (A [1+T, B, C, *S] -> the next H), on the Triton kernels; act_module
    the activation module (or None), which must have act_params."""
    T1 = A.shape[0]
    if bias_last:                   # a Linear's features, whatever dims lead: channels last, S = 1
        A4 = A.reshape(T1, -1, A.shape[-1], 1)
    elif bias is None and bn is None:
        A4 = A.reshape(T1, -1, 1, 1)                               # no per-channel coefficient
    else:
        A4 = A.reshape(T1, A.shape[1], A.shape[2], -1)
    s, h, k0, k1 = coefficients(A4[0], A4[1:], bias, bn, bn_mode, update_stats)
    return _Epilogue.apply(A4, s, h, k0, k1, act_params(act_module)).view(A.shape)


def can_run(A: torch.Tensor, bias, bn, act_module, bias_last: bool) -> bool:
    """Whether epilogue_triton takes this layer (else epilogue_torch)."""
    if act_params(act_module) is None or A.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return False
    if bias_last and bn is not None and A.dim() != 3:               # bias on the last dim, BatchNorm on dim 1
        return False
    return A.numel() > 0

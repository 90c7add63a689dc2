"""Triton kernels for linear_jvp (math and contract in linear_jvp.py, whose torch reference is the oracle).

Forward: ONE launch computes y = σ(x Wᵀ + b) and all T tangents y_dot[t] = σ'(a) ⊙ (x_dot[t] Wᵀ).
Each program owns a BLOCK_M x BLOCK_N output tile and stacks its primal rows and the matching
tangent rows into one [TP1·BLOCK_M, BLOCK_K] operand (row r: t = r // BLOCK_M, m = r % BLOCK_M;
t = 0 is the primal), so each k-step is a single tl.dot and each W tile is read once for all 1+T
products. The epilogue views the fp32 accumulator as [TP1, BLOCK_M, BLOCK_N], takes a = acc[0] + b,
and writes y = σ(a) and y_dot = σ'(a) ⊙ acc[1:]. No pre-activation is written.
TP1 = next power of two >= 1+T, at most 8: with T > 7 the tangents are split into chunks of 7 along
grid axis 1, and each chunk recomputes the primal rows (it needs σ'(a)) and re-reads W.

Backward: one elementwise launch turns (gy, gyd, y, y_dot) into GA = [g_a; g_adot] with the
output-based formulas of `_slope_curvature` in linear_jvp.py (silu alone recomputes a, a_dot), then
cuBLAS GEMMs: [gx; gx_dot] = GA W, gW = GAᵀ [x; x_dot], gb = Σ_m g_a.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .backend import check_dot_dtype, first_order, interpreting
from .linear_jvp import ACTIVATIONS, apply_layer, stack_primal_tangents

ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}   # identity 0, relu 1, leaky_relu 2, tanh 3, sigmoid 4, softplus 5, silu 6
TP1_MAX = 8


# ---------------------------------------------------------------------------------------------
# Activation epilogue (fp32): y = σ(a), d1 = σ'(a)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _act_fwd(a, ACT: tl.constexpr, slope):
    if ACT == 0:      # identity
        y = a
        d1 = tl.full(a.shape, 1.0, tl.float32)
    elif ACT == 1:    # relu
        y = tl.maximum(a, 0.0)
        d1 = tl.where(a > 0, 1.0, 0.0)
    elif ACT == 2:    # leaky_relu
        y = tl.where(a > 0, a, a * slope)
        d1 = tl.where(a > 0, 1.0, slope)
    elif ACT == 3:    # tanh(a) = 2 sigmoid(2a) - 1;  σ' = 1 - y²
        y = 2.0 * tl.sigmoid(2.0 * a) - 1.0
        d1 = 1.0 - y * y
    elif ACT == 4:    # sigmoid;  σ' = y (1 - y)
        y = tl.sigmoid(a)
        d1 = y * (1.0 - y)
    elif ACT == 5:    # softplus = max(a, 0) + log(1 + e^-|a|);  σ' = sigmoid(a)
        y = tl.maximum(a, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(a)))
        d1 = tl.sigmoid(a)
    else:             # silu = a s, s = sigmoid(a);  σ' = s (1 + a (1 - s))
        s = tl.sigmoid(a)
        y = a * s
        d1 = s * (1.0 + a * (1.0 - s))
    return y, d1


# ---------------------------------------------------------------------------------------------
# Forward kernel
# ---------------------------------------------------------------------------------------------
# One fixed tile for the interpreter (which cannot autotune) and for OWF_KERNELS_AUTOTUNE=0.
FIXED_CONFIG = dict(BLOCK_R=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
INTERP_CONFIG = dict(BLOCK_R=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=4)


def _fwd_configs():
    return [
        triton.Config({"BLOCK_R": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_R": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_R": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_R": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_R": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    ]


@triton.jit
def _linear_jvp_fwd_kernel(
    # Pointers
    x_ptr, xd_ptr, w_ptr, b_ptr, out_ptr,
    # Sizes
    M, N, K, T,
    # Strides
    stride_xm, stride_xk, stride_dt, stride_dm, stride_dk, stride_wn, stride_wk,
    # Scalars
    slope,
    # Meta-parameters
    TP1: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    CAST_F32: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    BLOCK_M: tl.constexpr = BLOCK_R // TP1
    # grouped ordering of output tiles, so consecutive programs share W tiles in L2
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)                      # tangent chunk
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    # stacked rows: r -> (t, m); t = 0 primal, t >= 1 tangent (pid_c·(TP1-1) + t - 1)
    r = tl.arange(0, BLOCK_R)
    t = r // BLOCK_M
    offs_m = pid_m * BLOCK_M + r % BLOCK_M
    tg = pid_c * (TP1 - 1) + t - 1
    row_ok = offs_m < M
    is_p = (t == 0) & row_ok
    is_t = (t > 0) & (tg < T) & row_ok
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    d_ptrs = xd_ptr + tg[:, None].to(tl.int64) * stride_dt + offs_m[:, None] * stride_dm + offs_k[None, :] * stride_dk
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn            # Wᵀ tile [BK, BN]

    acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        # read (1+T)·BLOCK_M·BLOCK_K of x / x_dot and BLOCK_K·BLOCK_N of W: W once for all 1+T
        h = tl.load(x_ptrs, mask=is_p[:, None] & k_ok[None, :], other=0.0) + \
            tl.load(d_ptrs, mask=is_t[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptrs, mask=k_ok[:, None] & (offs_n < N)[None, :], other=0.0)
        if CAST_F32:
            h = h.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(h, wt, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        d_ptrs += BLOCK_K * stride_dk
        w_ptrs += BLOCK_K * stride_wk

    # epilogue: a = acc[0] + b; y = σ(a); y_dot = σ'(a) ⊙ acc[1:]
    acc3 = tl.reshape(acc, (TP1, BLOCK_M, BLOCK_N))
    t3 = tl.arange(0, TP1)[:, None, None]
    a = tl.sum(tl.where(t3 == 0, acc3, 0.0), axis=0)                                    # [BM, BN]
    if HAS_BIAS:
        a += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    y, d1 = _act_fwd(a, ACT, slope)
    res = tl.where(t3 == 0, y[None, :, :], d1[None, :, :] * acc3)

    # out is [1+T, M, N] contiguous: slot 0 = y (written by chunk 0), slot 1+tg = y_dot[tg]
    slot = tl.where(t3 == 0, 0, pid_c * (TP1 - 1) + t3)
    ok_slot = ((t3 == 0) & (pid_c == 0)) | ((t3 > 0) & (slot <= T))
    om = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    out_ptrs = out_ptr + slot.to(tl.int64) * M * N + om[None, :, None] * N + offs_n[None, None, :]
    mask = ok_slot & (om < M)[None, :, None] & (offs_n < N)[None, None, :]
    tl.store(out_ptrs, res.to(out_ptr.dtype.element_ty), mask=mask)


_linear_jvp_fwd_tuned = triton.autotune(configs=_fwd_configs(), key=["M", "N", "K", "T", "TP1"])(
    _linear_jvp_fwd_kernel)
_TUNED: dict = {}   # (M, N, K, T, dtype, precision) -> the autotuner's choice


# ---------------------------------------------------------------------------------------------
# Backward elementwise kernel: (gy, gyd, y, y_dot) -> GA = [g_a; g_adot]
#   g_adot[t] = gyd[t] σ'(a);   g_a = gy σ'(a) + c Σ_t gyd[t] v[t]
#   with (σ', c, v) = tanh: (1-y², -2y, y_dot), sigmoid: (y(1-y), 1-2y, y_dot),
#   softplus: (1-e^-y, e^-y, y_dot), relu/leaky/identity: (from sign of y, 0, -),
#   silu: (s(1+a(1-s)), s(1-s)(2+a(1-2s)), a_dot) from the recomputed pre-activations.
# ---------------------------------------------------------------------------------------------
@triton.jit
def _linear_jvp_bwd_kernel(
    # Pointers
    out_ptr, pre_ptr, gy_ptr, gyd_ptr, ga_ptr,
    # Sizes
    MN, T,
    # Scalars
    slope,
    # Meta-parameters
    ACT: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ACT == 6:   # silu: from the pre-activations
        a = tl.load(pre_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.sigmoid(a)
        d1 = s * (1.0 + a * (1.0 - s))
        c = s * (1.0 - s) * (2.0 + a * (1.0 - 2.0 * s))
        v_ptr = pre_ptr
    else:
        y = tl.load(out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v_ptr = out_ptr
        if ACT == 0:
            d1 = tl.full(y.shape, 1.0, tl.float32)
            c = tl.zeros(y.shape, tl.float32)
        elif ACT == 1:
            d1 = tl.where(y > 0, 1.0, 0.0)
            c = tl.zeros(y.shape, tl.float32)
        elif ACT == 2:
            d1 = tl.where(y > 0, 1.0, slope)
            c = tl.zeros(y.shape, tl.float32)
        elif ACT == 3:
            d1 = 1.0 - y * y
            c = -2.0 * y
        elif ACT == 4:
            d1 = y * (1.0 - y)
            c = 1.0 - 2.0 * y
        else:           # softplus
            c = tl.exp(-y)
            d1 = 1.0 - c
    acc = tl.zeros((BLOCK,), tl.float32)
    g_ptrs = gyd_ptr + offs              # gyd[t]           (pointers advance by MN: 64-bit arithmetic)
    v_ptrs = v_ptr + MN + offs           # y_dot[t] or a_dot[t]
    o_ptrs = ga_ptr + MN + offs          # g_adot[t]
    for t in range(T):
        g = tl.load(g_ptrs, mask=mask, other=0.0).to(tl.float32)
        if ACT >= 3:   # σ'' ≠ 0
            v = tl.load(v_ptrs, mask=mask, other=0.0).to(tl.float32)
            acc += g * v
        tl.store(o_ptrs, (g * d1).to(ga_ptr.dtype.element_ty), mask=mask)
        g_ptrs += MN
        v_ptrs += MN
        o_ptrs += MN
    tl.store(ga_ptr + offs, (gy * d1 + c * acc).to(ga_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Host functions
# ---------------------------------------------------------------------------------------------
def _precision(dtype):
    """The fp32 dot's precision. Default "tf32x3" (three TF32 tensor-core products, fp32 accuracy):
    on an H200 it was both faster and closer to float64 than the FMA path "ieee" (rel. err 3.3e-7 vs
    1.4e-6 at K = N = 4096; benchmarks/results/gpu_2026-11-28_h200_run1.md). With TF32 matmuls
    allowed globally (torch.backends.cuda.matmul.allow_tf32) it is "tf32", as cuBLAS would be.
    OWF_KERNELS_FP32_DOT = ieee | tf32x3 | tf32 overrides. The interpreter computes in fp32
    whatever is asked. bf16/fp16 dots: Triton's default (None)."""
    if dtype != torch.float32:
        return None
    choice = os.environ.get("OWF_KERNELS_FP32_DOT", "")
    if choice:
        if choice not in ("ieee", "tf32x3", "tf32"):
            raise ValueError(f"OWF_KERNELS_FP32_DOT={choice!r} is not one of ieee, tf32x3, tf32")
        return choice
    if interpreting():
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def _autotune() -> bool:
    return not interpreting() and os.environ.get("OWF_KERNELS_AUTOTUNE", "1") != "0"


def _tp1(T: int) -> int:
    return min(TP1_MAX, triton.next_power_of_2(1 + T))


def forward_triton(x, x_dot, weight, bias, activation, negative_slope):
    """x [M, K], x_dot [T, M, K] (any strides) -> out [1+T, M, N] = [y; y_dot], one launch."""
    T, M, K = x_dot.shape
    N = weight.shape[0]
    out = torch.empty((1 + T, M, N), dtype=x.dtype, device=x.device)
    TP1 = _tp1(T)
    chunks = triton.cdiv(T, TP1 - 1)
    args = (x, x_dot, weight, bias if bias is not None else weight, out,
            M, N, K, T,
            x.stride(0), x.stride(1), x_dot.stride(0), x_dot.stride(1), x_dot.stride(2),
            weight.stride(0), weight.stride(1),
            float(negative_slope))
    meta = dict(TP1=TP1, ACT=ACT_CODE[activation], HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype),
                CAST_F32=interpreting() and x.dtype != torch.float32)
    if interpreting() or not _autotune():
        cfg = INTERP_CONFIG if interpreting() else FIXED_CONFIG
    else:
        # Autotune once per shape, then launch the plain kernel with the winner: the autotuner's
        # own per-call bookkeeping cost ~80 µs of host time per launch on an H200 host.
        key = (M, N, K, T, x.dtype, meta["PRECISION"])
        cfg = _TUNED.get(key)
        if cfg is None:
            grid = lambda META: (triton.cdiv(M, META["BLOCK_R"] // TP1) * triton.cdiv(N, META["BLOCK_N"]), chunks)  # noqa: E731
            _linear_jvp_fwd_tuned[grid](*args, **meta)
            best = _linear_jvp_fwd_tuned.best_config
            _TUNED[key] = dict(best.kwargs, num_warps=best.num_warps, num_stages=best.num_stages)
            return out
    grid = (triton.cdiv(M, cfg["BLOCK_R"] // TP1) * triton.cdiv(N, cfg["BLOCK_N"]), chunks)
    _linear_jvp_fwd_kernel[grid](*args, **meta, **cfg)
    return out


def grad_preact_triton(out, gy, gyd, activation, negative_slope, pre=None):
    """GA = [g_a; g_adot] [1+T, M, N] in one elementwise launch."""
    T1, M, N = out.shape
    gy, gyd = gy.contiguous(), gyd.contiguous()
    ga = torch.empty_like(out)
    BLOCK = 1024
    _linear_jvp_bwd_kernel[(triton.cdiv(M * N, BLOCK),)](
        out, pre if pre is not None else out, gy, gyd, ga, M * N, T1 - 1, float(negative_slope),
        ACT=ACT_CODE[activation], BLOCK=BLOCK)
    return ga


class _LinearJVPTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_dot, weight, bias, activation, negative_slope):
        out = forward_triton(x, x_dot, weight, bias, activation, negative_slope)
        # Saved: inputs and outputs only. Every activation's backward is written in y and y_dot,
        # except silu, whose backward recomputes a and a_dot with one extra GEMM rather than have
        # forward write a pre-activation tensor that only backward would read.
        ctx.save_for_backward(x, x_dot, weight, bias, out)
        ctx.activation, ctx.negative_slope = activation, negative_slope
        return out[0], out[1:]

    @staticmethod
    @first_order       # a create_graph=True backward through it raises, see tests
    def backward(ctx, gy, gyd):
        x, x_dot, weight, bias, out = ctx.saved_tensors
        T1, M, N = out.shape
        K = x.shape[1]
        pre = None
        if ctx.activation == "silu":
            pre = F.linear(stack_primal_tangents(x, x_dot), weight)
            if bias is not None:
                pre[0] += bias
        GA = grad_preact_triton(out, gy, gyd, ctx.activation, ctx.negative_slope, pre)
        GA2 = GA.view(T1 * M, N)
        gx = gxd = gw = gb = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gh = (GA2 @ weight).view(T1, M, K)                       # [gx; gx_dot] = GA W (cuBLAS)
            gx, gxd = gh[0], gh[1:]
        if ctx.needs_input_grad[2]:
            # gW = g_aᵀ x + Σ_t g_adot[t]ᵀ x_dot[t]: two GEMMs, no stacked copy of the inputs
            gw = torch.addmm(GA[0].t() @ x, GA[1:].reshape((T1 - 1) * M, N).t(), x_dot.reshape((T1 - 1) * M, K))
        if bias is not None and ctx.needs_input_grad[3]:
            gb = GA[0].sum(0, dtype=torch.float32).to(bias.dtype)     # gb = Σ_m g_a
        return gx, gxd, gw, gb, None, None


def linear_jvp_triton(x, x_dot, weight, bias=None, activation="identity", negative_slope=0.2):
    """The Triton path; same contract as `owf_kernels.linear_jvp`."""
    check_dot_dtype(x)
    return apply_layer(_LinearJVPTriton, x, x_dot, weight, bias, activation, negative_slope)

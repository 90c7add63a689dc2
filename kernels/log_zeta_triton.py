"""Triton kernels for log_zeta (math and contract in log_zeta.py, whose torch reference is the oracle).

Forward, one pass over d and log_q (read 2S values, write 3 per program):
each program streams a contiguous chunk in BLOCK-wide tiles and keeps, per lane, an online
max m and the rescaled sums s1 = Σ exp(l - m), s2 = Σ exp(2(l - m)), with l = d/w - log_q:

    m' = max(m, l);  s1 = s1 e^(m - m') + e^(l - m');  s2 = s2 e^(2(m - m')) + e^(2(l - m'))

(-inf lanes contribute 0; m' = -inf keeps the sums at 0). The lanes, then the programs' partials,
are combined the same way. With one program (S <= BLOCK·ITERS) the kernel writes the final
log-sum-exp itself; otherwise a second one-program launch combines the partials.
Backward, one pass: ∂/∂d_i = g·exp(l_i - lse)/w, ∂/∂log_q_i = -g·exp(l_i - lse) (0 if lse = -inf).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .backend import interpreting
from .log_zeta import check_inputs, differentiable_grads

NEG_INF = float("-inf")


@triton.jit
def _merge(m, s1, s2, m_b, s1_b, s2_b):
    """Combine two (max, Σe, Σe²) summaries; -inf maxima carry zero sums."""
    m_new = tl.maximum(m, m_b)
    finite = m_new > float("-inf")
    a = tl.where(finite, tl.exp(m - m_new), 0.0)
    b = tl.where(finite, tl.exp(m_b - m_new), 0.0)
    return m_new, s1 * a + s1_b * b, s2 * a * a + s2_b * b * b


@triton.jit
def _reduce_lanes(m, s1, s2):
    """[BLOCK] per-lane summaries -> scalars."""
    m_all = tl.max(m, axis=0)
    finite = m_all > float("-inf")
    a = tl.where(finite, tl.exp(m - m_all), 0.0)
    return m_all, tl.sum(s1 * a, axis=0), tl.sum(s2 * a * a, axis=0)


@triton.jit
def _log_zeta_partials_kernel(
    # Pointers
    d_ptr, lq_ptr, part_ptr, lse_ptr,
    # Sizes
    S, CHUNK,
    # Scalars
    inv_w,
    # Meta-parameters
    BLOCK: tl.constexpr, WRITE_LSE: tl.constexpr,
):
    pid = tl.program_id(0)
    start = pid * CHUNK
    m = tl.full((BLOCK,), float("-inf"), tl.float32)
    s1 = tl.zeros((BLOCK,), tl.float32)
    s2 = tl.zeros((BLOCK,), tl.float32)
    for off in range(start, start + CHUNK, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        mask = offs < S
        # read 2 values per sample
        d = tl.load(d_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lq = tl.load(lq_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        l = tl.where(mask, d * inv_w - lq, float("-inf"))
        e_ok = l > float("-inf")
        m_new = tl.maximum(m, l)
        finite = m_new > float("-inf")
        a = tl.where(finite, tl.exp(m - m_new), 0.0)
        e = tl.where(e_ok, tl.exp(l - m_new), 0.0)
        s1 = s1 * a + e
        s2 = s2 * a * a + e * e
        m = m_new
    mb, s1b, s2b = _reduce_lanes(m, s1, s2)
    if WRITE_LSE:
        tl.store(lse_ptr, tl.where(s1b > 0, mb + tl.log(s1b), float("-inf")))
    tl.store(part_ptr + pid * 3 + 0, mb)
    tl.store(part_ptr + pid * 3 + 1, s1b)
    tl.store(part_ptr + pid * 3 + 2, s2b)


@triton.jit
def _log_zeta_combine_kernel(part_ptr, lse_ptr, P, BLOCK: tl.constexpr):
    m = tl.full((BLOCK,), float("-inf"), tl.float32)
    s1 = tl.zeros((BLOCK,), tl.float32)
    s2 = tl.zeros((BLOCK,), tl.float32)
    for off in range(0, P, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        mask = offs < P
        mb = tl.load(part_ptr + offs * 3 + 0, mask=mask, other=float("-inf"))
        s1b = tl.load(part_ptr + offs * 3 + 1, mask=mask, other=0.0)
        s2b = tl.load(part_ptr + offs * 3 + 2, mask=mask, other=0.0)
        m, s1, s2 = _merge(m, s1, s2, mb, s1b, s2b)
    mb, s1b, s2b = _reduce_lanes(m, s1, s2)
    tl.store(lse_ptr, tl.where(s1b > 0, mb + tl.log(s1b), float("-inf")))


@triton.jit
def _log_zeta_bwd_kernel(
    d_ptr, lq_ptr, lse_ptr, g_ptr, gd_ptr, glq_ptr,
    S, inv_w,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    lse = tl.load(lse_ptr)
    g = tl.load(g_ptr).to(tl.float32)
    d = tl.load(d_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    lq = tl.load(lq_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    l = d * inv_w - lq
    # softmax weight; lse = -inf only when every l = -inf, so the test on l covers it
    p = tl.where(l > float("-inf"), tl.exp(l - lse), 0.0)
    tl.store(gd_ptr + offs, (g * p * inv_w).to(gd_ptr.dtype.element_ty), mask=mask)
    tl.store(glq_ptr + offs, (-g * p).to(glq_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Host functions
# ---------------------------------------------------------------------------------------------
# Launch shape: measured on an H200 over BLOCK {1024, 2048, 4096} x programs/SM {4, 8, 16} x warps
# {4, 8} at S = 1e8 (benchmarks/results/gpu_2026-11-28_h200_run2.md): 1024 / 8 / 8 was fastest,
# 4045 GB/s = 95% of the device-to-device copy bandwidth (4 programs/SM, 4 warps: 72%).
BLOCK_DEFAULT, PROGRAMS_PER_SM, NUM_WARPS = 1024, 8, 8
_SMS = {}


def _launch_shape(S: int, block=None, programs_per_sm=None):
    """(BLOCK, CHUNK, programs): enough programs to fill a GPU, few enough to combine in one launch."""
    if interpreting():
        BLOCK, max_programs = block or 256, 8
    else:
        BLOCK = block or BLOCK_DEFAULT
        dev = torch.cuda.current_device()
        if dev not in _SMS:
            _SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
        max_programs = (programs_per_sm or PROGRAMS_PER_SM) * _SMS[dev]
    programs = max(1, min(max_programs, triton.cdiv(S, 4 * BLOCK)))
    chunk = triton.cdiv(triton.cdiv(S, programs), BLOCK) * BLOCK
    return BLOCK, chunk, triton.cdiv(S, chunk)


def _partials(d, log_q, w, block=None, programs_per_sm=None, num_warps=NUM_WARPS):
    """Per-program partials [P, 3] (fp32) and the log-sum-exp (0-dim fp32). The launch shape is
    a parameter so that benchmarks/gpu_check.py can sweep it."""
    d, log_q = d.contiguous(), log_q.contiguous()
    S = d.numel()
    BLOCK, CHUNK, P = _launch_shape(S, block, programs_per_sm)
    parts = torch.empty((P, 3), dtype=torch.float32, device=d.device)
    lse = torch.empty((), dtype=torch.float32, device=d.device)
    _log_zeta_partials_kernel[(P,)](d, log_q, parts, lse, S, CHUNK, 1.0 / w, BLOCK=BLOCK, WRITE_LSE=P == 1,
                                    num_warps=num_warps)
    if P > 1:
        _log_zeta_combine_kernel[(1,)](parts, lse, P, BLOCK=256)
    return parts, lse


class _LogZetaTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d, log_q, w):
        _, lse = _partials(d, log_q, w)
        ctx.save_for_backward(d, log_q, lse)        # the lse, not the weights, as in a softmax
        ctx.w = w
        return (lse - math.log(d.numel())).to(d.dtype)

    @staticmethod
    def backward(ctx, g):
        d, log_q, lse = ctx.saved_tensors
        if torch.is_grad_enabled():                 # create_graph=True: the reference's differentiable formulas
            return (*differentiable_grads(d, log_q, g, ctx.w), None)
        d, log_q = d.contiguous(), log_q.contiguous()
        gd, glq = torch.empty_like(d), torch.empty_like(log_q)
        BLOCK = 1024
        _log_zeta_bwd_kernel[(triton.cdiv(d.numel(), BLOCK),)](
            d, log_q, lse, g.contiguous(), gd, glq, d.numel(), 1.0 / ctx.w, BLOCK=BLOCK)
        return gd, glq, None


def log_zeta_triton(d, log_q, w=1.0):
    check_inputs(d, log_q, w)
    return _LogZetaTriton.apply(d, log_q, float(w))


def log_zeta_partials_triton(d, log_q, w=1.0) -> torch.Tensor:
    """[m, s1, s2, n] (float64) of one chunk, reduced on the device."""
    from .log_zeta import combine_partials
    check_inputs(d, log_q, w)
    parts, _ = _partials(d, log_q, float(w))
    p = parts.double()
    n = torch.full((p.shape[0], 1), 0.0, dtype=torch.float64, device=p.device)
    n[-1] = float(d.numel())            # the count is carried once
    return combine_partials(torch.cat([p, n], 1))

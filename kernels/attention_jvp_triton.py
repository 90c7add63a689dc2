"""Triton kernels for sdpa_jvp (math and contract in attention_jvp.py, whose torch reference is the oracle).

Layout: the batch dims `*` of q [*, L, E] become (B, H) (views; see `_bh`), a tangent [T, *, L, E]
becomes [T, B, H, L, E]; every operand is read through its own strides (a [B, L, H, E] -> [B, H,
L, E] transpose needs no copy), outputs and gradients are written contiguous.

Forward (`_fwd_kernel`): one program per (block of BLOCK_M queries, batch-head, tangent t). It
streams key blocks and keeps, in log2 units (s₂ = s·log₂e), the online softmax of flash attention
plus the tangent's accumulators, all rescaled by α = 2^(m_old − m_new) when the running max moves:

    l   ← α l   + Σ_j p_ij                       p_ij = 2^(s₂_ij − m)
    A   ← α A   + p v                            (o's numerator)
    D   ← α D   + (p ⊙ ṡ_t) v + p v̇_t            ṡ_t = c (q̇_t kᵀ + q k̇_tᵀ)
    μ̃   ← α μ̃   + Σ_j p_ij ṡ_t,ij
    then o = A / l,  μ_t = μ̃ / l,  ȯ_t = D / l − μ_t ⊙ o,  lse = (m + log₂ l) ln 2

The tangent index is a grid axis: each tangent's program recomputes s and p (the primal's share
of the work, 2 of its 6 GEMMs), in exchange for no [T, ...] accumulators in registers. The program
of t = 0 writes o and lse; each writes ȯ_t and μ_t. A row that sees no key has l = 0: it writes
o = ȯ = 0 and lse = -inf (its p is taken as 0 everywhere, in backward too).

Backward: δ' and ν_t (see attention_jvp.py) are two row reductions in torch, then two kernels
recompute p = exp(s − lse) and ṡ_t block by block (no [L, S] tensor is stored):
- `_bwd_kv_kernel`, one program per (block of BLOCK_N keys, batch-head), loops over t, then
  over query blocks: g_k, g_v accumulate over all t; g_k̇_t, g_v̇_t are written after each t.
- `_bwd_q_kernel`, one program per (block of BLOCK_M queries, batch-head), loops over t, then over
  key blocks: g_q accumulates over all t; g_q̇_t is written after each t.
The primal-only terms (g_o vᵀ − δ' in g_s, pᵀ g_o in g_v) join at t = 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .backend import interpreting
from .linear_jvp_triton import _autotune, _precision      # one dot-precision and autotune policy for every kernel here

LOG2E = tl.constexpr(1.4426950408889634)      # s₂ = s·log₂e: the kernels use exp2/log2
LN2 = tl.constexpr(0.6931471805599453)

# One fixed tile for the interpreter (which cannot autotune; dots want tiles >= 16). On a GPU the
# autotuner picks among configs sized for an H200 (sm_90, 228 KB shared memory per SM): the
# forward keeps two [BLOCK_M, Ev] accumulators and three [BLOCK_M, BLOCK_N] tiles (s, ṡ, p) live,
# the backward five [BLOCK_M, BLOCK_N] tiles and four [BLOCK_N, E] accumulators, so its blocks are
# smaller. Configs that do not fit are skipped by the autotuner (OutOfResources).
INTERP_CONFIG = dict(BLOCK_M=16, BLOCK_N=16)
# OWF_KERNELS_AUTOTUNE=0 on a GPU: one small tile that fits every head dim here, compiled once per
# specialisation instead of once per config (the autotuner compiled 15 configs for each of the GPU
# check's 10 shapes: more than 6 minutes on the H200, 2026-12-04)
FIXED_CONFIG = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)


def _fwd_configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in ((128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (64, 64, 8, 2),
                                  (64, 32, 4, 1), (32, 32, 4, 1))]


def _bwd_configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in ((64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2))]


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(ptr, offs_r, offs_c, stride_r, stride_c, n_r, n_c, CAST_F32: tl.constexpr):
    """A [len(offs_r), len(offs_c)] tile, zero outside [n_r, n_c]; fp32 when CAST_F32 (the
    interpreter computes bf16 dots in fp32: load and cast at once)."""
    x = tl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c,
                mask=(offs_r < n_r)[:, None] & (offs_c < n_c)[None, :], other=0.0)
    if CAST_F32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _scores(q, kt, mask_ptr, offs_m, offs_n, stride_mm, stride_mn, L, S, qk_scale,
            MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """s₂ = (c q kᵀ + mask)·log₂e for a [BLOCK_M, BLOCK_N] tile; -inf where masked, past S or
    above the (top-left) diagonal. q [BM, E], kt = kᵀ [E, BN]."""
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    ok = (offs_m < L)[:, None] & (offs_n < S)[None, :]
    if MASK == 1:      # bool: True attends
        m = tl.load(mask_ptr + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn, mask=ok, other=0)
        ok = ok & (m != 0)
    if MASK == 2:      # additive
        s += tl.load(mask_ptr + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn,
                     mask=ok, other=0.0).to(tl.float32) * LOG2E
    if IS_CAUSAL:
        ok = ok & (offs_m[:, None] >= offs_n[None, :])
    return tl.where(ok, s, float("-inf"))


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _fwd_kernel(
    # Pointers
    q_ptr, k_ptr, v_ptr, qd_ptr, kd_ptr, vd_ptr, mask_ptr, o_ptr, od_ptr, lse_ptr, mu_ptr,
    # Sizes
    H, L, S, E, EV, T,
    # Strides (q, k, v: [B, H, seq, dim]; tangents: [T, B, H, seq, dim]; mask: [B, H, L, S])
    stride_qb, stride_qh, stride_qm, stride_qk,
    stride_kb, stride_kh, stride_kn, stride_kk,
    stride_vb, stride_vh, stride_vn, stride_vk,
    stride_qdt, stride_qdb, stride_qdh, stride_qdm, stride_qdk,
    stride_kdt, stride_kdb, stride_kdh, stride_kdn, stride_kdk,
    stride_vdt, stride_vdb, stride_vdh, stride_vdn, stride_vdk,
    stride_mb, stride_mh, stride_mm, stride_mn,
    # Scalars
    sm_scale,
    # Meta-parameters
    HAS_QD: tl.constexpr, HAS_KD: tl.constexpr, HAS_VD: tl.constexpr, MASK: tl.constexpr,
    IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr, CAST_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_z = tl.program_id(1).to(tl.int64)    # batch-head
    t = tl.program_id(2).to(tl.int64)        # tangent
    off_b = pid_z // H
    off_h = pid_z % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    offs_n0 = tl.arange(0, BLOCK_N)

    q_ptr += off_b * stride_qb + off_h * stride_qh
    k_ptr += off_b * stride_kb + off_h * stride_kh
    v_ptr += off_b * stride_vb + off_h * stride_vh
    qd_ptr += t * stride_qdt + off_b * stride_qdb + off_h * stride_qdh
    kd_ptr += t * stride_kdt + off_b * stride_kdb + off_h * stride_kdh
    vd_ptr += t * stride_vdt + off_b * stride_vdb + off_h * stride_vdh
    mask_ptr += off_b * stride_mb + off_h * stride_mh
    qk_scale = sm_scale * LOG2E          # s₂ = c q kᵀ log₂e

    # read BLOCK_M·E of q (and q̇_t) once; they stay in registers
    q = _load_tile(q_ptr, offs_m, offs_e, stride_qm, stride_qk, L, E, CAST_F32)
    if HAS_QD:
        qd = _load_tile(qd_ptr, offs_m, offs_e, stride_qdm, stride_qdk, L, E, CAST_F32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)   # running max of s₂
    l_i = tl.zeros([BLOCK_M], tl.float32)                 # Σ_j 2^(s₂ − m)
    mu_i = tl.zeros([BLOCK_M], tl.float32)                # Σ_j p ṡ (unnormalised μ)
    acc = tl.zeros([BLOCK_M, BLOCK_EV], tl.float32)       # A = Σ_j p v
    acc_d = tl.zeros([BLOCK_M, BLOCK_EV], tl.float32)     # D = Σ_j (p ⊙ ṡ) v + p v̇

    hi = S
    if IS_CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)          # keys past the block's last query are masked
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        # read BLOCK_N·(E + Ev) of k, v (and of k̇_t, v̇_t) per key block
        kt = _load_tile(k_ptr, offs_e, offs_n, stride_kk, stride_kn, E, S, CAST_F32)          # kᵀ [E, BN]
        v = _load_tile(v_ptr, offs_n, offs_ev, stride_vn, stride_vk, S, EV, CAST_F32)         # [BN, Ev]
        s = _scores(q, kt, mask_ptr, offs_m, offs_n, stride_mm, stride_mn, L, S, qk_scale,
                    MASK, IS_CAUSAL, PRECISION)
        # online softmax; a row with nothing seen yet (m = -inf) uses 0 as its max: p = 0, α = 0
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        acc_d = acc_d * alpha[:, None]
        if HAS_QD or HAS_KD:
            sd = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)                                     # ṡ / c
            if HAS_QD:
                sd = tl.dot(qd, kt, sd, input_precision=PRECISION)                            # q̇ kᵀ
            if HAS_KD:
                kdt = _load_tile(kd_ptr, offs_e, offs_n, stride_kdk, stride_kdn, E, S, CAST_F32)
                sd = tl.dot(q, kdt, sd, input_precision=PRECISION)                            # + q k̇ᵀ
            ps = p * (sd * sm_scale)                                                          # p ⊙ ṡ
            mu_i = mu_i * alpha + tl.sum(ps, 1)
            acc_d = tl.dot(ps.to(v.dtype), v, acc_d, input_precision=PRECISION)               # + (p ⊙ ṡ) v
        if HAS_VD:
            vd = _load_tile(vd_ptr, offs_n, offs_ev, stride_vdn, stride_vdk, S, EV, CAST_F32)
            acc_d = tl.dot(p.to(vd.dtype), vd, acc_d, input_precision=PRECISION)              # + p v̇
        m_i = m_new

    # epilogue: o = A/l, μ = μ̃/l, ȯ = D/l − μ ⊙ o; a row with l = 0 writes zeros and lse = -inf
    dead = l_i == 0.0
    inv_l = tl.where(dead, 0.0, 1.0 / tl.where(dead, 1.0, l_i))
    o = acc * inv_l[:, None]
    mu = mu_i * inv_l
    od = acc_d * inv_l[:, None] - mu[:, None] * o
    lse = tl.where(dead, float("-inf"), (m_i + tl.log2(tl.where(dead, 1.0, l_i))) * LN2)

    # outputs are contiguous: o [B·H, L, Ev], od [T, B·H, L, Ev], lse [B·H, L], mu [T, B·H, L]
    Z = tl.num_programs(1)
    row_ok = offs_m < L
    out_mask = row_ok[:, None] & (offs_ev < EV)[None, :]
    o_offs = offs_m[:, None] * EV + offs_ev[None, :]
    tl.store(od_ptr + (t * Z + pid_z) * L * EV + o_offs, od.to(od_ptr.dtype.element_ty), mask=out_mask)
    tl.store(mu_ptr + (t * Z + pid_z) * L + offs_m, mu, mask=row_ok)
    if t == 0:
        tl.store(o_ptr + pid_z * L * EV + o_offs, o.to(o_ptr.dtype.element_ty), mask=out_mask)
        tl.store(lse_ptr + pid_z * L + offs_m, lse, mask=row_ok)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _bwd_kv_kernel(
    # Pointers
    q_ptr, k_ptr, v_ptr, qd_ptr, kd_ptr, vd_ptr, mask_ptr,
    go_ptr, god_ptr, lse_ptr, mu_ptr, nu_ptr, delta_ptr,
    gk_ptr, gv_ptr, gkd_ptr, gvd_ptr,
    # Sizes
    H, L, S, E, EV, T,
    # Strides (as in _fwd_kernel; go, god, lse, mu, nu, delta and the gradients are contiguous)
    stride_qb, stride_qh, stride_qm, stride_qk,
    stride_kb, stride_kh, stride_kn, stride_kk,
    stride_vb, stride_vh, stride_vn, stride_vk,
    stride_qdt, stride_qdb, stride_qdh, stride_qdm, stride_qdk,
    stride_kdt, stride_kdb, stride_kdh, stride_kdn, stride_kdk,
    stride_vdt, stride_vdb, stride_vdh, stride_vdn, stride_vdk,
    stride_mb, stride_mh, stride_mm, stride_mn,
    # Scalars
    sm_scale,
    # Meta-parameters
    HAS_QD: tl.constexpr, HAS_KD: tl.constexpr, HAS_VD: tl.constexpr, MASK: tl.constexpr,
    IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr, CAST_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
):
    """One block of keys j (rows of the tiles below are keys: pᵀ, ṡᵀ, ... [BLOCK_N, BLOCK_M]):

        g_v   = Σ_i pᵀ g_o + Σ_t ṗ_tᵀ g_ȯ_t          g_v̇_t = pᵀ g_ȯ_t
        g_k   = c Σ_t (g_s,tᵀ q + g_ṡ_tᵀ q̇_t)       g_k̇_t = c g_ṡ_tᵀ q
        a_t   = g_ȯ_t vᵀ − ν_t,   g_ṡ_t = p ⊙ a_t,   g_s,t = p ⊙ (g_ȯ_t v̇_tᵀ + a_t ⊙ (ṡ_t − μ_t))
                                                     (+ p ⊙ (g_o vᵀ − δ') at t = 0)
    """
    pid_n = tl.program_id(0)
    pid_z = tl.program_id(1).to(tl.int64)
    Z = tl.num_programs(1)
    off_b = pid_z // H
    off_h = pid_z % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    q_ptr += off_b * stride_qb + off_h * stride_qh
    k_ptr += off_b * stride_kb + off_h * stride_kh
    v_ptr += off_b * stride_vb + off_h * stride_vh
    mask_ptr += off_b * stride_mb + off_h * stride_mh
    qk_scale = sm_scale * LOG2E

    k = _load_tile(k_ptr, offs_n, offs_e, stride_kn, stride_kk, S, E, CAST_F32)               # [BN, E]
    v = _load_tile(v_ptr, offs_n, offs_ev, stride_vn, stride_vk, S, EV, CAST_F32)             # [BN, Ev]
    g_k = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
    g_v = tl.zeros([BLOCK_N, BLOCK_EV], tl.float32)
    lo = 0
    if IS_CAUSAL:
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M      # queries before the block's first key see none of it
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        if HAS_KD:
            kd = _load_tile(kd_ptr + t64 * stride_kdt + off_b * stride_kdb + off_h * stride_kdh,
                            offs_n, offs_e, stride_kdn, stride_kdk, S, E, CAST_F32)
        if HAS_VD:
            vd = _load_tile(vd_ptr + t64 * stride_vdt + off_b * stride_vdb + off_h * stride_vdh,
                            offs_n, offs_ev, stride_vdn, stride_vdk, S, EV, CAST_F32)
        g_kd = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
        g_vd = tl.zeros([BLOCK_N, BLOCK_EV], tl.float32)
        for start_m in range(lo, L, BLOCK_M):
            offs_m = start_m + offs_m0
            row_ok = offs_m < L
            q = _load_tile(q_ptr, offs_m, offs_e, stride_qm, stride_qk, L, E, CAST_F32)       # [BM, E]
            god = _load_tile(god_ptr + (t64 * Z + pid_z) * L * EV, offs_m, offs_ev, EV, 1, L, EV, CAST_F32)
            lse = tl.load(lse_ptr + pid_z * L + offs_m, mask=row_ok, other=float("inf"))
            lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)    # dead rows: p = 0
            mu = tl.load(mu_ptr + (t64 * Z + pid_z) * L + offs_m, mask=row_ok, other=0.0)
            nu = tl.load(nu_ptr + (t64 * Z + pid_z) * L + offs_m, mask=row_ok, other=0.0)
            # pᵀ = exp(s − lse)ᵀ, as [BN, BM]: the transpose of the forward's tile
            st = tl.trans(_scores(q, tl.trans(k), mask_ptr, offs_m, offs_n, stride_mm, stride_mn, L, S,
                                  qk_scale, MASK, IS_CAUSAL, PRECISION))
            pt = tl.exp2(st - lse2[None, :])
            govt = tl.dot(v, tl.trans(god), input_precision=PRECISION)                        # (g_ȯ vᵀ)ᵀ
            g_vd = tl.dot(pt.to(god.dtype), god, g_vd, input_precision=PRECISION)            # g_v̇ += pᵀ g_ȯ
            gst = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)                                    # g_s,tᵀ / p
            if HAS_QD or HAS_KD:
                sdt = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)                                # ṡᵀ / c
                if HAS_QD:
                    qd = _load_tile(qd_ptr + t64 * stride_qdt + off_b * stride_qdb + off_h * stride_qdh,
                                    offs_m, offs_e, stride_qdm, stride_qdk, L, E, CAST_F32)
                    sdt = tl.dot(k, tl.trans(qd), sdt, input_precision=PRECISION)             # (q̇ kᵀ)ᵀ
                if HAS_KD:
                    sdt = tl.dot(kd, tl.trans(q), sdt, input_precision=PRECISION)             # (q k̇ᵀ)ᵀ
                sdt = sdt * sm_scale
                sdt = sdt - mu[None, :]                                                       # (ṡ − μ)ᵀ
                pdt = pt * sdt                                                                # ṗᵀ
                g_v = tl.dot(pdt.to(god.dtype), god, g_v, input_precision=PRECISION)         # g_v += ṗᵀ g_ȯ
                at = govt - nu[None, :]                                                       # aᵀ
                gsdt = pt * at                                                                # g_ṡᵀ = (p ⊙ a)ᵀ
                gst += at * sdt                                                               # + (a ⊙ (ṡ − μ))ᵀ
                g_kd = tl.dot(gsdt.to(q.dtype), q, g_kd, input_precision=PRECISION)          # g_k̇ / c
                if HAS_QD:
                    g_k = tl.dot(gsdt.to(qd.dtype), qd, g_k, input_precision=PRECISION)      # + g_ṡᵀ q̇ (/ c)
            if HAS_VD:
                gst += tl.dot(vd, tl.trans(god), input_precision=PRECISION)                   # (g_ȯ v̇ᵀ)ᵀ
            if t == 0:
                go = _load_tile(go_ptr + pid_z * L * EV, offs_m, offs_ev, EV, 1, L, EV, CAST_F32)
                delta = tl.load(delta_ptr + pid_z * L + offs_m, mask=row_ok, other=0.0)
                gst += tl.dot(v, tl.trans(go), input_precision=PRECISION) - delta[None, :]   # (g_o vᵀ − δ')ᵀ
                g_v = tl.dot(pt.to(go.dtype), go, g_v, input_precision=PRECISION)            # g_v += pᵀ g_o
            gst = pt * gst
            g_k = tl.dot(gst.to(q.dtype), q, g_k, input_precision=PRECISION)                 # + g_sᵀ q (/ c)
        # g_k̇_t, g_v̇_t: [T, B·H, S, ·] contiguous
        n_ok = offs_n < S
        if HAS_KD:
            tl.store(gkd_ptr + (t64 * Z + pid_z) * S * E + offs_n[:, None] * E + offs_e[None, :],
                     (g_kd * sm_scale).to(gkd_ptr.dtype.element_ty), mask=n_ok[:, None] & (offs_e < E)[None, :])
        if HAS_VD:
            tl.store(gvd_ptr + (t64 * Z + pid_z) * S * EV + offs_n[:, None] * EV + offs_ev[None, :],
                     g_vd.to(gvd_ptr.dtype.element_ty), mask=n_ok[:, None] & (offs_ev < EV)[None, :])
    n_ok = offs_n < S
    tl.store(gk_ptr + pid_z * S * E + offs_n[:, None] * E + offs_e[None, :],
             (g_k * sm_scale).to(gk_ptr.dtype.element_ty), mask=n_ok[:, None] & (offs_e < E)[None, :])
    tl.store(gv_ptr + pid_z * S * EV + offs_n[:, None] * EV + offs_ev[None, :],
             g_v.to(gv_ptr.dtype.element_ty), mask=n_ok[:, None] & (offs_ev < EV)[None, :])


@triton.jit
def _bwd_q_kernel(
    # Pointers
    q_ptr, k_ptr, v_ptr, qd_ptr, kd_ptr, vd_ptr, mask_ptr,
    go_ptr, god_ptr, lse_ptr, mu_ptr, nu_ptr, delta_ptr,
    gq_ptr, gqd_ptr,
    # Sizes
    H, L, S, E, EV, T,
    # Strides (as in _bwd_kv_kernel)
    stride_qb, stride_qh, stride_qm, stride_qk,
    stride_kb, stride_kh, stride_kn, stride_kk,
    stride_vb, stride_vh, stride_vn, stride_vk,
    stride_qdt, stride_qdb, stride_qdh, stride_qdm, stride_qdk,
    stride_kdt, stride_kdb, stride_kdh, stride_kdn, stride_kdk,
    stride_vdt, stride_vdb, stride_vdh, stride_vdn, stride_vdk,
    stride_mb, stride_mh, stride_mm, stride_mn,
    # Scalars
    sm_scale,
    # Meta-parameters
    HAS_QD: tl.constexpr, HAS_KD: tl.constexpr, HAS_VD: tl.constexpr, MASK: tl.constexpr,
    IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr, CAST_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr,
):
    """One block of queries i:  g_q = c Σ_t (g_s,t k + g_ṡ_t k̇_t),  g_q̇_t = c g_ṡ_t k
    (g_s,t and g_ṡ_t as in _bwd_kv_kernel)."""
    pid_m = tl.program_id(0)
    pid_z = tl.program_id(1).to(tl.int64)
    Z = tl.num_programs(1)
    off_b = pid_z // H
    off_h = pid_z % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    row_ok = offs_m < L
    q_ptr += off_b * stride_qb + off_h * stride_qh
    k_ptr += off_b * stride_kb + off_h * stride_kh
    v_ptr += off_b * stride_vb + off_h * stride_vh
    mask_ptr += off_b * stride_mb + off_h * stride_mh
    qk_scale = sm_scale * LOG2E

    q = _load_tile(q_ptr, offs_m, offs_e, stride_qm, stride_qk, L, E, CAST_F32)               # [BM, E]
    go = _load_tile(go_ptr + pid_z * L * EV, offs_m, offs_ev, EV, 1, L, EV, CAST_F32)
    lse = tl.load(lse_ptr + pid_z * L + offs_m, mask=row_ok, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)            # dead rows: p = 0
    delta = tl.load(delta_ptr + pid_z * L + offs_m, mask=row_ok, other=0.0)
    g_q = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)
    hi = S
    if IS_CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        if HAS_QD:
            qd = _load_tile(qd_ptr + t64 * stride_qdt + off_b * stride_qdb + off_h * stride_qdh,
                            offs_m, offs_e, stride_qdm, stride_qdk, L, E, CAST_F32)
        god = _load_tile(god_ptr + (t64 * Z + pid_z) * L * EV, offs_m, offs_ev, EV, 1, L, EV, CAST_F32)
        mu = tl.load(mu_ptr + (t64 * Z + pid_z) * L + offs_m, mask=row_ok, other=0.0)
        nu = tl.load(nu_ptr + (t64 * Z + pid_z) * L + offs_m, mask=row_ok, other=0.0)
        g_qd = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + offs_n0
            k = _load_tile(k_ptr, offs_n, offs_e, stride_kn, stride_kk, S, E, CAST_F32)       # [BN, E]
            v = _load_tile(v_ptr, offs_n, offs_ev, stride_vn, stride_vk, S, EV, CAST_F32)     # [BN, Ev]
            s = _scores(q, tl.trans(k), mask_ptr, offs_m, offs_n, stride_mm, stride_mn, L, S,
                        qk_scale, MASK, IS_CAUSAL, PRECISION)
            p = tl.exp2(s - lse2[:, None])
            gs = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)                                     # g_s,t / p
            if HAS_QD or HAS_KD:
                gov = tl.dot(god, tl.trans(v), input_precision=PRECISION)                     # g_ȯ vᵀ
                sd = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
                if HAS_QD:
                    sd = tl.dot(qd, tl.trans(k), sd, input_precision=PRECISION)
                if HAS_KD:
                    kd = _load_tile(kd_ptr + t64 * stride_kdt + off_b * stride_kdb + off_h * stride_kdh,
                                    offs_n, offs_e, stride_kdn, stride_kdk, S, E, CAST_F32)
                    sd = tl.dot(q, tl.trans(kd), sd, input_precision=PRECISION)
                a = gov - nu[:, None]                                                         # a = g_ȯ vᵀ − ν
                gsd = p * a                                                                   # g_ṡ = p ⊙ a
                gs += a * (sd * sm_scale - mu[:, None])                                       # + a ⊙ (ṡ − μ)
                g_qd = tl.dot(gsd.to(k.dtype), k, g_qd, input_precision=PRECISION)           # g_q̇ / c
                if HAS_KD:
                    g_q = tl.dot(gsd.to(kd.dtype), kd, g_q, input_precision=PRECISION)       # + g_ṡ k̇ (/ c)
            if HAS_VD:
                vd = _load_tile(vd_ptr + t64 * stride_vdt + off_b * stride_vdb + off_h * stride_vdh,
                                offs_n, offs_ev, stride_vdn, stride_vdk, S, EV, CAST_F32)
                gs += tl.dot(god, tl.trans(vd), input_precision=PRECISION)                    # g_ȯ v̇ᵀ
            if t == 0:
                gs += tl.dot(go, tl.trans(v), input_precision=PRECISION) - delta[:, None]    # g_o vᵀ − δ'
            gs = p * gs
            g_q = tl.dot(gs.to(k.dtype), k, g_q, input_precision=PRECISION)                  # + g_s k (/ c)
        if HAS_QD:
            tl.store(gqd_ptr + (t64 * Z + pid_z) * L * E + offs_m[:, None] * E + offs_e[None, :],
                     (g_qd * sm_scale).to(gqd_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_e < E)[None, :])
    tl.store(gq_ptr + pid_z * L * E + offs_m[:, None] * E + offs_e[None, :],
             (g_q * sm_scale).to(gq_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_e < E)[None, :])


_fwd_tuned = triton.autotune(configs=_fwd_configs(), key=["L", "S", "E", "EV", "T"])(_fwd_kernel)
_bwd_kv_tuned = triton.autotune(configs=_bwd_configs(), key=["L", "S", "E", "EV", "T"])(_bwd_kv_kernel)
_bwd_q_tuned = triton.autotune(configs=_bwd_configs(), key=["L", "S", "E", "EV", "T"])(_bwd_q_kernel)


# ---------------------------------------------------------------------------------------------
# Host side: layout, launch
# ---------------------------------------------------------------------------------------------
def _bh(x: torch.Tensor, lead: int = 0) -> torch.Tensor:
    """[lead dims, *, n, d] -> [lead dims, B, H, n, d]: the batch dims `*` as (B, H), a view where
    the strides allow it (H = the last batch dim, B = the others merged)."""
    batch = x.shape[lead:-2]
    if len(batch) == 2:
        return x
    if len(batch) < 2:
        return x.reshape(*x.shape[:lead], *([1] * (2 - len(batch))), *x.shape[lead:])
    return x.reshape(*x.shape[:lead], -1, *x.shape[-3:])


def _strides(x, n):
    return tuple(x.stride()) if x is not None else (0,) * n


def _common(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal):
    """Views, strides and meta-parameters shared by the forward and backward launches."""
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    qb, kb, vb = _bh(q), _bh(k), _bh(v)
    qdb, kdb, vdb = (_bh(t, 1) if t is not None else None for t in (q_dot, k_dot, v_dot))
    B, H = qb.shape[:2]
    T = next(t.shape[0] for t in (q_dot, k_dot, v_dot) if t is not None)
    if attn_mask is None:
        mask, kind = q, 0
        mstrides = (0, 0, 0, 0)
    else:
        mask = _bh(attn_mask.expand(*q.shape[:-1], S))
        kind = 1 if attn_mask.dtype == torch.bool else 2
        if kind == 1:
            mask = mask.view(torch.uint8)      # Triton reads bytes; True attends
        mstrides = tuple(mask.stride())
    ptrs = (qb, kb, vb, qdb if qdb is not None else qb, kdb if kdb is not None else kb,
            vdb if vdb is not None else vb, mask)
    strides = (*qb.stride(), *kb.stride(), *vb.stride(),
               *_strides(qdb, 5), *_strides(kdb, 5), *_strides(vdb, 5), *mstrides)
    meta = dict(HAS_QD=q_dot is not None, HAS_KD=k_dot is not None, HAS_VD=v_dot is not None, MASK=kind,
                IS_CAUSAL=bool(is_causal), PRECISION=_precision(q.dtype),
                CAST_F32=interpreting() and q.dtype != torch.float32,
                BLOCK_E=max(16, triton.next_power_of_2(E)), BLOCK_EV=max(16, triton.next_power_of_2(Ev)))
    return ptrs, strides, meta, (B, H, L, S, E, Ev, T)


def _launch(plain, tuned, grid, args, meta):
    """The plain kernel with the interpreter's tile, or the autotuned one on a GPU."""
    if interpreting():
        plain[grid(INTERP_CONFIG)](*args, **meta, **INTERP_CONFIG)
    elif not _autotune():
        plain[grid(FIXED_CONFIG)](*args, **meta, **FIXED_CONFIG)
    else:
        tuned[grid](*args, **meta)


def attention_jvp_forward(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale):
    """-> o [*, L, Ev], o_dot [T, *, L, Ev] (q's dtype), lse [B·H, L], mu [T, B·H, L] (fp32)."""
    ptrs, strides, meta, (B, H, L, S, E, Ev, T) = _common(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal)
    Z = B * H
    o = torch.empty((*q.shape[:-1], Ev), dtype=q.dtype, device=q.device)
    o_dot = torch.empty((T, *o.shape), dtype=q.dtype, device=q.device)
    lse = torch.empty((Z, L), dtype=torch.float32, device=q.device)
    mu = torch.empty((T, Z, L), dtype=torch.float32, device=q.device)
    args = (*ptrs, o, o_dot, lse, mu, H, L, S, E, Ev, T, *strides, scale)
    _launch(_fwd_kernel, _fwd_tuned, lambda META: (triton.cdiv(L, META["BLOCK_M"]), Z, T), args, meta)
    return o, o_dot, lse, mu


def attention_jvp_backward(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale,
                           o, o_dot, lse, mu, g_o, g_o_dot, needs):
    """Gradients (g_q, g_k, g_v, g_q̇, g_k̇, g_v̇), None where not needed (`needs`: six bools) or
    where the tangent is None."""
    ptrs, strides, meta, (B, H, L, S, E, Ev, T) = _common(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal)
    Z = B * H
    g_o = g_o.reshape(Z, L, Ev).contiguous()
    g_od = g_o_dot.reshape(T, Z, L, Ev).contiguous()
    # ν_t = rowsum(g_ȯ_t ⊙ o);  δ' = rowsum(g_o ⊙ o) + Σ_t rowsum(g_ȯ_t ⊙ ȯ_t)   (fp32, [·, Z, L])
    of, odf = o.reshape(Z, L, Ev).float(), o_dot.reshape(T, Z, L, Ev).float()
    nu = (g_od.float() * of).sum(-1)
    delta = (g_o.float() * of).sum(-1) + (g_od.float() * odf).sum(-1).sum(0)
    rows = (g_o, g_od, lse, mu, nu, delta)
    new = lambda x, lead=(): torch.empty((*lead, Z, x.shape[-2], x.shape[-1]), dtype=q.dtype, device=q.device)  # noqa: E731
    gq = gk = gv = gqd = gkd = gvd = None
    if needs[0] or needs[3]:
        gq = new(q)
        gqd = new(q, (T,)) if q_dot is not None else gq
        _launch(_bwd_q_kernel, _bwd_q_tuned, lambda META: (triton.cdiv(L, META["BLOCK_M"]), Z),
                (*ptrs, *rows, gq, gqd, H, L, S, E, Ev, T, *strides, scale), meta)
    if any(needs[i] for i in (1, 2, 4, 5)):
        gk, gv = new(k), new(v)
        gkd = new(k, (T,)) if k_dot is not None else gk
        gvd = new(v, (T,)) if v_dot is not None else gv
        _launch(_bwd_kv_kernel, _bwd_kv_tuned, lambda META: (triton.cdiv(S, META["BLOCK_N"]), Z),
                (*ptrs, *rows, gk, gv, gkd, gvd, H, L, S, E, Ev, T, *strides, scale), meta)
    shaped = lambda g, x, need: g.view(x.shape) if need and g is not None and x is not None else None  # noqa: E731
    return (shaped(gq, q, needs[0]), shaped(gk, k, needs[1]), shaped(gv, v, needs[2]),
            shaped(gqd, q_dot, needs[3]), shaped(gkd, k_dot, needs[4]), shaped(gvd, v_dot, needs[5]))

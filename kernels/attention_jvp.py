"""sdpa_jvp: scaled dot-product attention and its Jacobian-vector products (tangents) in one pass.

torch.func.jvp has no forward-mode rule for F.scaled_dot_product_attention on the CPU in torch
2.14.1 (pytorch#128971: "_scaled_dot_product_flash_attention_for_cpu ... not implemented yet").
This is that rule, for T tangents at once. Per batch element (shapes without the leading `*`):

    q [L, E], k [S, E], v [S, Ev];  tangents q̇_t [L, E], k̇_t [S, E], v̇_t [S, Ev], t = 1..T
    s   = c q kᵀ + mask               c = scale (default 1/√E); mask: 0 / -inf (bool) or additive
    p   = softmax(s)                  (row-wise; a row with every key masked gives p = 0, as SDPA does)
    o   = p v                                                                           [L, Ev]
    ṡ_t = c (q̇_t kᵀ + q k̇_tᵀ)                                                          [L, S]
    ṗ_t = p ⊙ (ṡ_t − μ_t),   μ_t = Σ_j p_ij ṡ_t,ij     (the softmax JVP)
    ȯ_t = ṗ_t v + p v̇_t = (p ⊙ ṡ_t) v − μ_t ⊙ o + p v̇_t                                [L, Ev]

(sCM, Lu & Song 2024, Appendix F.) In a flash loop over key blocks the second form is an online
softmax that carries, besides o's accumulator and the running max and sum, the accumulators of
(p ⊙ ṡ) v + p v̇ and of μ, all rescaled together: see attention_jvp_triton.py.

Backward, given g_o = ∂L/∂o [L, Ev] and g_ȯ_t = ∂L/∂ȯ_t [L, Ev] (derived here: jvp_flash_attention
and NVlabs/rcm backpropagate through o only):

    ν_t   = rowsum(g_ȯ_t ⊙ o)                                                          [L]
    δ'    = rowsum(g_o ⊙ o) + Σ_t rowsum(g_ȯ_t ⊙ ȯ_t)                                   [L]
    a_t   = g_ȯ_t vᵀ − ν_t                                                             [L, S]
    g_ṡ_t = p ⊙ a_t                                 (the softmax JVP, transposed)
    g_s   = p ⊙ (g_o vᵀ + Σ_t g_ȯ_t v̇_tᵀ + Σ_t a_t ⊙ (ṡ_t − μ_t) − δ')                [L, S]
    g_q   = c (g_s k + Σ_t g_ṡ_t k̇_t)              g_q̇_t = c g_ṡ_t k
    g_k   = c (g_sᵀ q + Σ_t g_ṡ_tᵀ q̇_t)            g_k̇_t = c g_ṡ_tᵀ q
    g_v   = pᵀ g_o + Σ_t ṗ_tᵀ g_ȯ_t                 g_v̇_t = pᵀ g_ȯ_t

g_s is the softmax backward of G = g_o vᵀ + Σ_t [g_ȯ_t v̇_tᵀ + a_t ⊙ (ṡ_t − μ_t)] (∂ṗ/∂s gives the
a-term), and δ' = rowsum(p ⊙ G) collapses with rowsum(ṗ_t) = 0 and ṗ_t v + p v̇_t = ȯ_t. Checked
against autograd of the math in float64 (1e-15) before either backward was written; the torch
path uses it above WHOLE_BYTES, the Triton kernels always.

Two implementations share this contract:
- `sdpa_jvp_torch`: the pure-PyTorch reference, the CPU path (the tests' oracle is func.jvp of the
  math attention). The primal and tangent rows are stacked so each product is one batched GEMM
  (see `_scores`, `_jvp_math`). Up to WHOLE_BYTES per [*, L, S] block autograd differentiates it
  (to any order), keeping about (1 + 2T) [*, L, S] fp32 blocks; above, it runs in chunks of query
  rows and keeps the inputs, outputs and μ only (see `_SDPAJVPTorch`). Where CPU flash attention
  takes the call, o and its row log-sum-exp come from flash and the tangents from them
  (`tangent_from_lse`), as in `sdpa_with_detached_tangent`, the rule without tangent_grad.
- the Triton kernels in `attention_jvp_triton.py`: one flash pass for o and all T tangents, saving
  the log-sum-exp and μ ([L] each), not p; a flash backward for every input (no [L, S] tensor).
`sdpa_jvp` picks one with a single `if` (see backend.py).
"""
from __future__ import annotations

import math

import torch

from .backend import check_dot_dtype, first_order, use_triton_dot


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def check_inputs(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale, dropout_p, enable_gqa):
    """Raise ValueError naming the bad value; return (T, scale as a float)."""
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p={dropout_p!r} is not supported (sdpa_jvp has no dropout); pass 0.0")
    if enable_gqa:
        raise ValueError(f"enable_gqa={enable_gqa!r} is not supported: repeat k and v over the query heads")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{name} must be [*, seq, dim], got shape {tuple(t.shape)}")
    if not q.dim() == k.dim() == v.dim():
        raise ValueError(f"q, k, v must have the same number of dims: got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        if q.dim() >= 3 and q.shape[:-3] == k.shape[:-3] and q.shape[-3] != k.shape[-3]:
            raise ValueError(f"q has {q.shape[-3]} heads and k {k.shape[-3]} (GQA): not supported; "
                             f"repeat k and v over the query heads")
        raise ValueError(f"q, k, v must share their batch dims [*]: got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k shape {tuple(k.shape)} does not end in E={q.shape[-1]} (q {tuple(q.shape)})")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v shape {tuple(v.shape)} does not have S={k.shape[-2]} keys (k {tuple(k.shape)})")
    tensors = [("q", q), ("k", k), ("v", v)]
    T = None
    for name, t, primal in (("q_dot", q_dot, q), ("k_dot", k_dot, k), ("v_dot", v_dot, v)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor or None, got {type(t).__name__}")
        if t.dim() != primal.dim() + 1 or t.shape[1:] != primal.shape or t.shape[0] < 1:
            raise ValueError(f"{name} must be [T, *{name[0]}.shape] with T >= 1: got {name} "
                             f"{tuple(t.shape)} for {name[0]} {tuple(primal.shape)}")
        if T is not None and t.shape[0] != T:
            raise ValueError(f"every tangent must have the same T: {name} has T={t.shape[0]}, "
                             f"an earlier one T={T}")
        T = t.shape[0]
        tensors.append((name, t))
    if T is None:
        raise ValueError("q_dot, k_dot and v_dot are all None: give at least one tangent")
    devices = {t.device for _, t in tensors}
    if len(devices) != 1:
        raise ValueError("all inputs must be on one device, got " +
                         ", ".join(f"{n} on {t.device}" for n, t in tensors))
    dtypes = {t.dtype for _, t in tensors}
    if len(dtypes) != 1:
        raise ValueError("q, k, v and the tangents must share one dtype, got " +
                         ", ".join(f"{n} {t.dtype}" for n, t in tensors))
    if attn_mask is not None:
        if is_causal:
            raise ValueError("attn_mask and is_causal=True together are not supported (SDPA refuses "
                             "them too): fold the causal mask into attn_mask")
        if not isinstance(attn_mask, torch.Tensor):
            raise ValueError(f"attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
        if not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
            raise ValueError(f"attn_mask must be bool or floating point, got dtype {attn_mask.dtype}")
        if attn_mask.device != q.device:
            raise ValueError(f"attn_mask is on {attn_mask.device} but q is on {q.device}")
        want = (*q.shape[:-1], k.shape[-2])
        try:
            ok = torch.broadcast_shapes(attn_mask.shape, want) == want
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)} does not broadcast to [*, L, S] = {want}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale={scale!r} must be a finite number or None")
    return T, float(scale)


def mask_bias(attn_mask, is_causal, L, S, dtype, device):
    """The additive mask (0 / -inf for bool, the values for float; a causal mask is top-left
    aligned, as SDPA's: key j is seen by query i iff j <= i), or None; and whether some query row
    sees no key at all (its softmax is 0/0: SDPA gives p = 0 there, and so do we)."""
    if is_causal:
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=device).tril()
    if attn_mask is None:
        return None, False
    if attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=dtype, device=device).masked_fill_(~attn_mask, -math.inf)
        return bias, bool((~attn_mask.any(-1)).any())
    bias = attn_mask.to(dtype)
    return bias, bool((bias == -math.inf).all(-1).any())


# ---------------------------------------------------------------------------------------------
# The pure-PyTorch reference (CPU path and oracle)
# ---------------------------------------------------------------------------------------------
# Two forms of the same math, chosen by the size of one [*, L, S] fp32 block (see
# docs/attention_jvp.md for the measurements behind both thresholds, 1 CPU thread):
# - up to WHOLE_BYTES: one pass of `_jvp_math` under autograd. Backward reuses what autograd kept,
#   about (1 + 2T) [*, L, S] blocks (p, ṡ, ṗ), and is differentiable to any order.
# - above: `_SDPAJVPTorch`, in chunks of query rows (rows are independent: the softmax runs over
#   keys) whose [*, rows, S] block is about CHUNK_BYTES. Forward keeps the inputs, the outputs and
#   μ [*, T, L]; backward recomputes p and ṡ chunk by chunk (one more forward's GEMMs) with the
#   formulas of the module docstring. Nothing [L, S] outlives a chunk, and no allocation reaches
#   glibc's 32 MiB mmap ceiling, where every call page-faults (owf_kernels.keep_freed_memory).
WHOLE_BYTES = 24 << 20
CHUNK_BYTES = 4 << 20
MIN_CHUNK_ROWS = 16


def _chunks(q, S):
    """Row ranges (i, j) covering the L query rows."""
    L = q.shape[-2]
    heads = q[..., 0, 0].numel()
    rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES // max(1, 4 * heads * S))
    return [(i, min(L, i + rows)) for i in range(0, L, rows)] or [(0, 0)]


def _rows(x, i, j):
    """Rows i:j of x [.., L, d] (a mask broadcast over rows, of size 1 there or 1-D, as it is)."""
    if x is None or x.dim() < 2 or x.shape[-2] == 1:
        return x
    return x[..., i:j, :]


def _safe_softmax(s, dead):
    """softmax over the last dim; with `dead`, rows whose entries are all -inf give 0, not NaN
    (they are softmaxed as zeros, then zeroed: no NaN reaches the gradient either)."""
    if not dead:
        return torch.softmax(s, -1)
    empty = (s == -math.inf).all(-1, keepdim=True)
    return torch.softmax(s.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)


def _scores(q, k, q_dot, k_dot, bias, c):
    """s = c q kᵀ + bias [*, r, S], ṡ [*, T, r, S] (None without q_dot and k_dot) and the stacked
    qs = c [q; q̇] [*, 1+T, r, E] (c q alone without q_dot). The tangent index sits at dim -3, so
    [q; q̇] is a row-stacked operand of one batched GEMM:

        [s; c q̇ kᵀ] = c [q; q̇] kᵀ       one GEMM over (1+T)·r rows   read (1+T)rE + SE, write (1+T)rS
        c q k̇ᵀ      = c q [k̇_1 … k̇_T]ᵀ   one GEMM, T·S columns         read rE + TSE,     write TrS
    """
    r, S = q.shape[-2], k.shape[-2]
    kt = k.transpose(-1, -2)                                               # [*, E, S]
    if q_dot is not None:
        qs = torch.cat([q.unsqueeze(-3), q_dot.movedim(0, -3)], -3) * c    # [*, 1+T, r, E]
        st = (qs.flatten(-3, -2) @ kt).unflatten(-2, (qs.shape[-3], r))    # [*, 1+T, r, S]
        s, s_dot = st[..., 0, :, :], st[..., 1:, :, :]
    else:
        qs = (q * c).unsqueeze(-3)
        s, s_dot = qs[..., 0, :, :] @ kt, None
    if k_dot is not None:                                                  # + c q k̇_tᵀ, all t in one GEMM
        T = k_dot.shape[0]
        qk = qs[..., 0, :, :] @ k_dot.movedim(0, -3).flatten(-3, -2).transpose(-1, -2)   # [*, r, T·S]
        qk = qk.unflatten(-1, (T, S)).transpose(-3, -2)                    # [*, T, r, S]
        s_dot = qk if s_dot is None else s_dot + qk
    if bias is not None:
        s = s + bias
    return s, s_dot, qs


def _jvp_math(q, k, v, q_dot, k_dot, v_dot, bias, dead, c):
    """The math rule on one chunk of query rows, stacked. q [*, r, E], k [*, S, E], v [*, S, Ev];
    tangents [T, *, ...] or None; bias broadcastable to [*, r, S] or None. Returns o [*, r, Ev],
    o_dot [T, *, r, Ev] and μ [*, T, r, 1] (None without q_dot and k_dot). Differentiable.

        [o | p v̇]  = p [v | v̇_1 … v̇_T]     one GEMM, (1+T)·Ev columns    read rS,  write (1+T)rEv
        ṗ v                                 one GEMM over T·r rows        read TrS, write TrEv
    """
    T = next(t.shape[0] for t in (q_dot, k_dot, v_dot) if t is not None)
    r, Ev = q.shape[-2], v.shape[-1]
    s, s_dot, _ = _scores(q, k, q_dot, k_dot, bias, c)
    p = _safe_softmax(s, dead)                                             # [*, r, S]
    vs = v if v_dot is None else torch.cat([v, v_dot.movedim(0, -2).flatten(-2)], -1)   # [*, S, (1+T)Ev]
    pv = p @ vs                                                            # [o | p v̇_1 … p v̇_T]
    o = pv[..., :Ev]
    o_dot = mu = None
    if s_dot is not None:
        ps = p.unsqueeze(-3) * s_dot                                       # p ⊙ ṡ_t
        mu = ps.sum(-1, keepdim=True)                                      # μ_t        [*, T, r, 1]
        p_dot = torch.addcmul(ps, p.unsqueeze(-3), mu, value=-1)           # ṗ_t = p ⊙ ṡ_t − p μ_t
        o_dot = (p_dot.flatten(-3, -2) @ v).unflatten(-2, (T, r))          # ṗ_t v      [*, T, r, Ev]
    if v_dot is not None:
        pvd = pv[..., Ev:].unflatten(-1, (T, Ev)).transpose(-3, -2)        # p v̇_t      [*, T, r, Ev]
        o_dot = pvd if o_dot is None else o_dot + pvd
    return o, o_dot.movedim(-3, 0), mu


# ---------------------------------------------------------------------------------------------
# CPU flash attention's log-sum-exp: the tangents without a softmax
# ---------------------------------------------------------------------------------------------
# Where CPU flash attention takes the call (`flash_cpu_takes`: what F.scaled_dot_product_attention
# runs there), it returns o and each row's log-sum-exp ℓ_i = log Σ_j exp(s_ij). With ℓ the tangents
# need no softmax pass:
#
#     p   = exp(c q kᵀ − ℓ)                          one GEMM (baddbmm), one exp in place     [n, L, S]
#     w_t = p ⊙ ṡ_t,  ṡ_t = c [q̇_t | q] [k | k̇_t]ᵀ   one GEMM with inner dim 2E, one multiply [T, n, L, S]
#     μ_t = rowsum(w_t)                                                                        [T, n, L, 1]
#     ȯ_t = w_t v + p v̇_t − μ_t ⊙ o                  two GEMMs, one addcmul                   [T, n, L, Ev]
#
# (n = the flattened batch dims.) It runs in chunks of n whose p and w blocks together take about
# TANGENT_CHUNK_BYTES (one head in blocks of query rows where a head alone is larger), so they stay
# in cache: at the DiT's [32, 4, 256, 32], T = 1, one thread (a scratch timing), the tangent took
# 35-38 ms in chunks of 1-4 MiB and 73 ms unchunked, against 112 ms for `_jvp_math` (which computes
# o again); flash itself took 13.5 ms. docs/attention_jvp.md has the committed round robin.
# Two users: `sdpa_with_detached_tangent` (the graph engine's SDPA rule without tangent_grad:
# MeanFlow, sCM and FFF detach the tangent), and `_SDPAJVPTorch`'s forward, whose backward then
# recomputes p as exp(s − ℓ) instead of a softmax.
TANGENT_CHUNK_BYTES = 2 << 20


def flash_cpu_takes(q, k, v, attn_mask, dropout_p, enable_gqa, flash=None):
    """Whether CPU flash attention computes this call (then its log-sum-exp serves the tangent):
    float32/float64 [B, H, L, E] on the CPU with one head dim E for q, k and v, last dims
    contiguous, no mask (is_causal is fine), no dropout, no GQA, no empty dim, and the flash
    backend enabled (torch.backends.cuda.enable_flash_sdp, which SDPA on the CPU obeys too; `flash`
    gives that flag where the caller read it: under torch.compile, jvp_compiled)."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64) and attn_mask is None
            and dropout_p == 0.0 and not enable_gqa and q.dim() == 4 and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]
            and q.shape[-1] == k.shape[-1] == v.shape[-1] and all(x.numel() > 0 for x in (q, k, v))
            and all(x.stride(-1) == 1 for x in (q, k, v))
            and (torch.backends.cuda.flash_sdp_enabled() if flash is None else flash))


def flash_cpu(q, k, v, is_causal, scale):
    """(o, ℓ [B, H, L]) by CPU flash attention; o differentiable as SDPA's own output."""
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, bool(is_causal), scale=scale)[:2]
    if lse.shape != q.shape[:-1]:       # e.g. core ATen decompositions return p there: refuse, not guess
        raise RuntimeError(f"_scaled_dot_product_flash_attention_for_cpu returned a second output of shape "
                           f"{tuple(lse.shape)}, not the log-sum-exp [B, H, L] = {tuple(q.shape[:-1])}")
    return o, lse


def tangent_from_lse(q, k, v, q_dot, k_dot, v_dot, o, lse, is_causal, c, with_mu=False):
    """ȯ [T, *, L, Ev] from flash's o [*, L, Ev] and ℓ [*, L] (the formulas above; no autograd graph
    is meant: call under torch.no_grad()). Tangents [T, *, ...] or None (at least one given). With
    `with_mu`, also μ [*, T, L, 1] (None without q_dot and k_dot), as forward_torch returns it.
    Chunks: whole heads while a head's p and w fit TANGENT_CHUNK_BYTES, else one head in blocks of
    query rows (rows are independent once ℓ is known)."""
    T = next(t.shape[0] for t in (q_dot, k_dot, v_dot) if t is not None)
    L, S, Ev, shape = q.shape[-2], k.shape[-2], v.shape[-1], o.shape
    flat = lambda x, lead=0: None if x is None else x.reshape(*x.shape[:lead], -1, *x.shape[-2:])  # noqa: E731
    q, k, v, o, q_dot, k_dot, v_dot = flat(q), flat(k), flat(v), flat(o), flat(q_dot, 1), flat(k_dot, 1), flat(v_dot, 1)
    lse = lse.reshape(-1, L, 1)
    causal = torch.ones(L, S, dtype=torch.bool, device=q.device).tril_().logical_not_() if is_causal else None
    n, row_bytes = q.shape[0], q.element_size() * S * (1 + T)
    step = max(1, TANGENT_CHUNK_BYTES // (row_bytes * L))
    rows = L if step > 1 else max(MIN_CHUNK_ROWS, TANGENT_CHUNK_BYTES // row_bytes)
    o_dot = q.new_empty((T, n, L, Ev))
    mu = q.new_empty((T, n, L, 1)) if with_mu and (q_dot is not None or k_dot is not None) else None
    for i in range(0, n, step):
        j = min(n, i + step)
        kc, vc = k[i:j], v[i:j]
        for a in range(0, L, rows):
            b = min(L, a + rows)
            qc = q[i:j, a:b]
            p = torch.baddbmm(lse[i:j, a:b].neg(), qc, kc.transpose(-1, -2), alpha=c).exp_()      # [m, r, S]
            if causal is not None:
                p.masked_fill_(causal[a:b], 0.0)
            if q_dot is not None and k_dot is not None:                               # c [q̇ | q] [k | k̇]ᵀ
                qq = torch.cat([q_dot[:, i:j, a:b], qc.expand(T, -1, -1, -1)], -1).mul_(c)
                kk = torch.cat([kc.expand(T, -1, -1, -1), k_dot[:, i:j]], -1)
                w = torch.matmul(qq.flatten(0, 1), kk.flatten(0, 1).transpose(-1, -2)).unflatten(0, (T, -1))
            elif q_dot is not None:
                w = torch.matmul(q_dot[:, i:j, a:b] * c, kc.transpose(-1, -2))
            elif k_dot is not None:
                w = torch.matmul(qc * c, k_dot[:, i:j].transpose(-1, -2))
            else:
                w = None
            if w is not None:
                w.mul_(p)                                                                      # w_t = p ⊙ ṡ_t
                od = torch.matmul(w, vc)                                                       # w_t v
                muc = w.sum(-1, keepdim=True)                                                  # μ_t
                od.addcmul_(muc, o[i:j, a:b], value=-1)                                        # − μ_t ⊙ o
                if mu is not None:
                    mu[:, i:j, a:b] = muc
                if v_dot is not None:
                    od.add_(torch.matmul(p, v_dot[:, i:j]))                                    # + p v̇_t
            else:
                od = torch.matmul(p, v_dot[:, i:j])
            o_dot[:, i:j, a:b] = od
    o_dot = o_dot.view(T, *shape)
    if not with_mu:
        return o_dot
    return o_dot, None if mu is None else mu.view(T, *shape[:-1], 1).movedim(0, -3)


def sdpa_with_detached_tangent(q, k, v, q_dot, k_dot, v_dot, attn_mask=None, is_causal=False, scale=None,
                               dropout_p=0.0, enable_gqa=False, flash=None):
    """(o, o_dot): o = F.scaled_dot_product_attention(q, k, v, ...), differentiable as SDPA's own
    output, and its tangents o_dot [T, *, L, Ev] without an autograd graph. Where CPU flash attention
    takes the call (`flash_cpu_takes`), o and its log-sum-exp come from that one kernel and the
    tangents from `tangent_from_lse`; elsewhere o is SDPA's and o_dot `sdpa_jvp`'s, under no_grad.
    `flash`: the flash backend's flag as the caller read it (None: read it here)."""
    if flash_cpu_takes(q, k, v, attn_mask, dropout_p, enable_gqa, flash):
        _, c = check_inputs(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale, dropout_p, enable_gqa)
        o, lse = flash_cpu(q, k, v, is_causal, scale)
        with torch.no_grad():
            return o, tangent_from_lse(q, k, v, q_dot, k_dot, v_dot, o, lse, is_causal, c)
    gqa = {"enable_gqa": True} if enable_gqa else {}      # an argument since torch 2.5: passed only when set
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, **gqa)
    with torch.no_grad():
        return o, sdpa_jvp(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale, dropout_p, enable_gqa)[1]


def forward_torch(q, k, v, q_dot, k_dot, v_dot, bias, dead, c):
    """(o [*, L, Ev], o_dot [T, *, L, Ev], μ [*, T, L, 1] or None), chunk by chunk of query rows."""
    chunks = _chunks(q, k.shape[-2])
    if len(chunks) == 1:
        return _jvp_math(q, k, v, q_dot, k_dot, v_dot, bias, dead, c)
    T = next(t.shape[0] for t in (q_dot, k_dot, v_dot) if t is not None)
    o = q.new_empty((*q.shape[:-1], v.shape[-1]))
    o_dot = q.new_empty((T, *o.shape))
    mu = q.new_empty((*q.shape[:-2], T, q.shape[-2], 1)) if q_dot is not None or k_dot is not None else None
    for i, j in chunks:
        oc, odc, muc = _jvp_math(q[..., i:j, :], k, v, _rows(q_dot, i, j), k_dot, v_dot, _rows(bias, i, j), dead, c)
        o[..., i:j, :] = oc
        o_dot[..., i:j, :] = odc
        if mu is not None:
            mu[..., i:j, :] = muc
    return o, o_dot, mu


def backward_torch(q, k, v, q_dot, k_dot, v_dot, bias, dead, c, o, o_dot, mu, g_o, g_od, needs, lse=None):
    """The six gradients (None where not needed), chunk by chunk of query rows, by the backward
    formulas of the module docstring. p and ṡ are recomputed per chunk ([*, 1+T, rows, S] blocks;
    p = exp(s − ℓ) given flash's log-sum-exp ℓ [*, L], a softmax otherwise); the products are stacked GEMMs:
    [g_s; g_ṡ] [k] gives g_q's first term and every g_q̇_t at once, [g_s; g_ṡ]ᵀ c[q; q̇] is g_k,
    [p; ṗ]ᵀ [g_o; g_ȯ] is g_v."""
    T = g_od.shape[0]
    has_sd = q_dot is not None or k_dot is not None
    gq = torch.empty_like(q) if needs[0] else None
    gqd = torch.empty_like(q_dot) if needs[3] else None
    gk = torch.zeros_like(k) if needs[1] else None
    gv = torch.zeros_like(v) if needs[2] else None
    gkd = torch.zeros_like(k_dot) if needs[4] else None
    gvd = torch.zeros_like(v_dot) if needs[5] else None
    vt = v.transpose(-1, -2)
    if v_dot is not None:   # [v | v̇_1 … v̇_T] [*, S, (1+T)Ev]: G = [g_o | g_ȯ_1 … g_ȯ_T] [v | v̇]ᵀ in one GEMM
        vcat = torch.cat([v, v_dot.movedim(0, -2).flatten(-2)], -1)
    for i, j in _chunks(q, k.shape[-2]):
        qc, qdc = q[..., i:j, :], _rows(q_dot, i, j)
        oc, odc, goc, godc = o[..., i:j, :], o_dot[..., i:j, :], g_o[..., i:j, :], g_od[..., i:j, :]
        r = j - i
        s, s_dot, qs = _scores(qc, k, qdc, k_dot, _rows(bias, i, j), c)
        p = _safe_softmax(s, dead) if lse is None else (s - lse[..., i:j, None]).exp_()   # [*, r, S]
        god = godc.movedim(0, -3)                                               # [*, T, r, Ev]
        # δ' = rowsum(g_o ⊙ o) + Σ_t rowsum(g_ȯ_t ⊙ ȯ_t)                          [*, r, 1]
        dp = (goc * oc).sum(-1, keepdim=True) + (god * odc.movedim(0, -3)).sum(-1, keepdim=True).sum(-3)
        # G = g_o vᵀ + Σ_t g_ȯ_t v̇_tᵀ − δ'                                        [*, r, S]
        if v_dot is not None:
            G = torch.cat([goc, god.transpose(-3, -2).flatten(-2)], -1) @ vcat.transpose(-1, -2)
        else:
            G = goc @ vt
        G.sub_(dp)
        GS = p.new_empty((*p.shape[:-2], 1 + T if has_sd else 1, r, p.shape[-1]))    # [g_s; g_ṡ_1 … g_ṡ_T]
        P = GS.new_empty(GS.shape) if has_sd else p.unsqueeze(-3)                 # [p; ṗ_1 … ṗ_T]
        if has_sd:
            muc = mu[..., i:j, :]
            nu = (god * oc.unsqueeze(-3)).sum(-1, keepdim=True)                 # ν_t = rowsum(g_ȯ_t ⊙ o)
            a = (god.flatten(-3, -2) @ vt).unflatten(-2, (T, r)).sub_(nu)       # a_t = g_ȯ_t vᵀ − ν_t
            sdm = s_dot.sub(muc)                                                # ṡ_t − μ_t
            torch.mul(p.unsqueeze(-3), sdm, out=P[..., 1:, :, :])               # ṗ_t = p ⊙ (ṡ_t − μ_t)
            P[..., 0, :, :] = p
            G.add_((a * sdm).sum(-3))                                           # + Σ_t a_t ⊙ (ṡ_t − μ_t)
            torch.mul(p.unsqueeze(-3), a, out=GS[..., 1:, :, :])                # g_ṡ_t = p ⊙ a_t
        torch.mul(p, G, out=GS[..., 0, :, :])                                   # g_s = p ⊙ G
        gs, gsd = GS[..., 0, :, :], GS[..., 1:, :, :]
        if needs[0] or needs[3]:
            KQ = (GS.flatten(-3, -2) @ k).unflatten(-2, (GS.shape[-3], r))      # [g_s k; g_ṡ_t k]
            if needs[0]:
                gq_c = KQ[..., 0, :, :] * c                                     # g_q = c (g_s k + Σ_t g_ṡ_t k̇_t)
                if k_dot is not None:
                    gq_c += (gsd @ k_dot.movedim(0, -3)).sum(-3) * c
                gq[..., i:j, :] = gq_c
            if needs[3]:
                gqd[..., i:j, :] = (KQ[..., 1:, :, :] * c).movedim(-3, 0)       # g_q̇_t = c g_ṡ_t k
        if needs[1]:                                                            # g_k = [g_s; g_ṡ]ᵀ c [q; q̇]
            if q_dot is not None:
                gk += GS.flatten(-3, -2).transpose(-1, -2) @ qs.flatten(-3, -2)
            else:
                gk += gs.transpose(-1, -2) @ qs[..., 0, :, :]
        if needs[4]:                                                            # g_k̇_t = c g_ṡ_tᵀ q
            gkd += (gsd.transpose(-1, -2) @ qs[..., :1, :, :]).movedim(-3, 0)
        if needs[2]:                                                            # g_v = [p; ṗ]ᵀ [g_o; g_ȯ]
            GO = torch.cat([goc.unsqueeze(-3), god], -3) if has_sd else goc.unsqueeze(-3)
            gv += P.flatten(-3, -2).transpose(-1, -2) @ GO.flatten(-3, -2)
        if needs[5]:                                                            # g_v̇_t = pᵀ g_ȯ_t
            gvd += (p.transpose(-1, -2) @ god.transpose(-3, -2).flatten(-2)).unflatten(-1, (T, -1)).movedim(-2, 0)
    return gq, gk, gv, gqd, gkd, gvd


class _SDPAJVPTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_dot, k_dot, v_dot, bias, dead, c):
        lse = None
        if flash_cpu_takes(q, k, v, bias, 0.0, False):     # o and ℓ by flash, the tangents and μ from ℓ
            o, lse = flash_cpu(q, k, v, False, c)
            o_dot, mu = tangent_from_lse(q, k, v, q_dot, k_dot, v_dot, o, lse, False, c, with_mu=True)
        else:
            o, o_dot, mu = forward_torch(q, k, v, q_dot, k_dot, v_dot, bias, dead, c)
        # Saved: the inputs, both outputs, μ [*, T, L, 1] and ℓ [*, L] where flash ran; p and ṡ are
        # recomputed per chunk (p = exp(s − ℓ) where ℓ is known, a softmax otherwise).
        ctx.save_for_backward(q, k, v, q_dot, k_dot, v_dot, bias, o, o_dot, mu, lse)
        ctx.dead, ctx.c = dead, c
        return o, o_dot

    @staticmethod
    def backward(ctx, g_o, g_od):
        q, k, v, q_dot, k_dot, v_dot, bias, o, o_dot, mu, lse = ctx.saved_tensors
        needs = ctx.needs_input_grad[:6]
        if torch.is_grad_enabled():
            # create_graph=True (a penalty on a gradient, double backward): autograd through the
            # math rule, recomputed whole, so the gradient is differentiable in turn
            inputs = (q, k, v, q_dot, k_dot, v_dot)
            wanted = [x for x, n in zip(inputs, needs) if n]
            with torch.enable_grad():
                outs = _jvp_math(q, k, v, q_dot, k_dot, v_dot, bias, ctx.dead, ctx.c)[:2]
            grads = iter(torch.autograd.grad(outs, wanted, (g_o, g_od), create_graph=True, allow_unused=True))
            return (*(next(grads) if n else None for n in needs), None, None, None)
        grads = backward_torch(q, k, v, q_dot, k_dot, v_dot, bias, ctx.dead, ctx.c, o, o_dot, mu,
                               g_o, g_od, needs, lse)
        return (*grads, None, None, None)


def sdpa_jvp_torch(q, k, v, q_dot, k_dot, v_dot, attn_mask=None, is_causal=False, scale=None,
                   dropout_p=0.0, enable_gqa=False):
    """The pure-PyTorch reference; same contract as `sdpa_jvp`. bf16/fp16 inputs are computed in
    float32 (as the kernel's accumulators are) and the outputs cast back."""
    T, c = check_inputs(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale, dropout_p, enable_gqa)
    ct = torch.promote_types(q.dtype, torch.float32)
    up = lambda t: None if t is None else t.to(ct)          # noqa: E731  (no copy when already ct)
    bias, dead = mask_bias(attn_mask, is_causal, q.shape[-2], k.shape[-2], ct, q.device)
    args = (up(q), up(k), up(v), up(q_dot), up(k_dot), up(v_dot), bias, dead, c)
    if 4 * q[..., 0].numel() * k.shape[-2] <= WHOLE_BYTES:          # one [*, L, S] fp32 block
        o, o_dot, _ = _jvp_math(*args)
    else:
        o, o_dot = _SDPAJVPTorch.apply(*args)
    return o.to(q.dtype).contiguous(), o_dot.to(q.dtype).contiguous()


# ---------------------------------------------------------------------------------------------
# The Triton path's autograd node (kernels and launchers in attention_jvp_triton.py)
# ---------------------------------------------------------------------------------------------
class _SDPAJVPTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale):
        from .attention_jvp_triton import attention_jvp_forward
        o, o_dot, lse, mu = attention_jvp_forward(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale)
        # Saved: the inputs, both outputs, the log-sum-exp [*, L] and μ [T, *, L] (fp32); p and ṡ
        # are recomputed block by block in backward.
        ctx.save_for_backward(q, k, v, q_dot, k_dot, v_dot, attn_mask, o, o_dot, lse, mu)
        ctx.is_causal, ctx.scale = is_causal, scale
        return o, o_dot

    @staticmethod
    @first_order       # a create_graph=True backward through it raises (the torch path is differentiable again)
    def backward(ctx, g_o, g_o_dot):
        from .attention_jvp_triton import attention_jvp_backward
        q, k, v, q_dot, k_dot, v_dot, attn_mask, o, o_dot, lse, mu = ctx.saved_tensors
        grads = attention_jvp_backward(q, k, v, q_dot, k_dot, v_dot, attn_mask, ctx.is_causal, ctx.scale,
                                       o, o_dot, lse, mu, g_o, g_o_dot, ctx.needs_input_grad[:6])
        return (*grads, None, None, None)


def sdpa_jvp_triton(q, k, v, q_dot, k_dot, v_dot, attn_mask=None, is_causal=False, scale=None,
                    dropout_p=0.0, enable_gqa=False):
    """The Triton path; same contract as `sdpa_jvp`."""
    _, c = check_inputs(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale, dropout_p, enable_gqa)
    check_dot_dtype(q)
    return _SDPAJVPTriton.apply(q, k, v, q_dot, k_dot, v_dot, attn_mask, bool(is_causal), c)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def sdpa_jvp(q, k, v, q_dot, k_dot, v_dot, attn_mask=None, is_causal=False, scale=None,
             dropout_p=0.0, enable_gqa=False):
    """o = softmax(q kᵀ·scale + mask) v, as F.scaled_dot_product_attention, and its tangents
    o_dot[t] = ∂o/∂(q, k, v) · (q_dot[t], k_dot[t], v_dot[t]), differentiable in all six inputs.

    q: [*, L, E], k: [*, S, E], v: [*, S, Ev]; q_dot: [T, *, L, E], k_dot: [T, *, S, E],
    v_dot: [T, *, S, Ev], each or None for a zero tangent (at least one given). attn_mask: bool
    (True = attend) or additive float, broadcastable to [*, L, S], a constant; is_causal: top-left
    causal mask, as SDPA's; scale: None = 1/√E. dropout_p != 0 and enable_gqa=True are refused.
    Returns o: [*, L, Ev] and o_dot: [T, *, L, Ev]. Triton on CUDA, the torch reference on CPU
    (see backend.py for OWF_KERNELS_BACKEND), which takes o and the tangents from CPU flash
    attention's log-sum-exp where flash runs (`flash_cpu_takes`) above WHOLE_BYTES.
    """
    if use_triton_dot(q):
        return sdpa_jvp_triton(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale, dropout_p, enable_gqa)
    return sdpa_jvp_torch(q, k, v, q_dot, k_dot, v_dot, attn_mask, is_causal, scale, dropout_p, enable_gqa)

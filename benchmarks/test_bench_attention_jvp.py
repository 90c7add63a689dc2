"""sdpa_jvp forward+tangent and forward+tangent+backward, swept over the sequence length L = S,
across providers, on a small DiT's attention (B = 8, H = 4 heads of E = 32, T = 1 tangent):

- "sdpa_jvp": owf_kernels' sdpa_jvp (Triton on CUDA, the stacked torch reference on CPU);
- "detached": owf_kernels.attention_jvp.sdpa_with_detached_tangent, what the graph engine's SDPA
  rule runs without tangent_grad (SDPA's o with autograd, the tangent without; on the CPU from
  flash attention's log-sum-exp). Forward only: its tangent has no backward;
- "func.jvp": torch.func.jvp of the math attention softmax(q kᵀ/√E) v (torch has no forward-mode
  rule for F.scaled_dot_product_attention on the CPU, pytorch#128971);
- "forward_ad": the same through dual tensors. Forward only: in torch 2.14.1 a backward through the
  tangent of torch.softmax under forward AD raises ("modified by an inplace operation");
- "compile": torch.compile of the func.jvp provider (inductor);
- "plain": F.scaled_dot_product_attention alone, no tangent: the floor. A forward with T tangents
  costs at least 1 + 2T of it in FLOPs (ṡ and ȯ are two products each), its backward 2.5x that.

"fwd" runs without autograd (a detached tangent's forward); "fwd+bwd" takes the gradient of
Σ o² + Σ ȯ² with respect to q, k, v. extra_info holds the FLOPs and the ideal ratio to "plain".

pytest-benchmark times one provider after another, which on shared cores skews the ratios; for the
ratios run the round robin instead (each round calls every provider once, in a shuffled order):

    python benchmarks/test_bench_attention_jvp.py [--rounds 15] [--threads 1] [--lengths 64 256]
                                                  [--batch 8] [--tangents 1]

(--batch 32 --lengths 256 is the issue's small DiT: 32x32 patch 2, width 128 in 4 heads, B = 32.)
"""
from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bench_support import DEVICE, smoke  # noqa: E402
from owf_kernels import keep_freed_memory  # noqa: E402
from owf_kernels.attention_jvp import sdpa_jvp, sdpa_with_detached_tangent  # noqa: E402

PROVIDERS = ["sdpa_jvp", "detached", "func.jvp", "forward_ad", "compile", "plain"]
B, H, E, T = 8, 4, 32, 1
LENGTHS = [64, 128, 256, 512]


def pytest_generate_tests(metafunc):
    if "L" in metafunc.fixturenames:
        metafunc.parametrize("L", [16] if smoke(metafunc.config) else LENGTHS)


def math_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def inputs(L, grad, dtype=torch.float32, device=DEVICE, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device).to(dtype)   # noqa: E731
    q, k, v = (r(B, H, L, E).requires_grad_(grad) for _ in range(3))
    return q, k, v, r(T, B, H, L, E), r(T, B, H, L, E), r(T, B, H, L, E)


def flops(L, backward):
    """2·L·S·(E + Ev) per head for the primal (q kᵀ, p v), twice that per tangent; backward 2.5x."""
    fwd = 2 * L * L * 2 * E * (1 + 2 * T) * B * H
    return fwd * (3.5 if backward else 1)


def provider_fn(provider, t, backward):
    """A zero-argument function computing (o, o_dot) with `provider`, then the backward if asked."""
    q, k, v, qd, kd, vd = t
    if provider == "sdpa_jvp":
        f = lambda: sdpa_jvp(q, k, v, qd, kd, vd)      # noqa: E731
    elif provider == "detached":
        if backward:
            pytest.skip("detached: its tangent has no backward (the fwd rows time a detached tangent's forward)")
        f = lambda: sdpa_with_detached_tangent(q, k, v, qd, kd, vd)      # noqa: E731
    elif provider == "plain":
        f = lambda: (F.scaled_dot_product_attention(q, k, v), None)      # noqa: E731
    elif provider in ("func.jvp", "compile"):
        def f():
            outs = [torch.func.jvp(math_attention, (q, k, v), (qd[i], kd[i], vd[i])) for i in range(T)]
            return outs[0][0], torch.stack([o[1] for o in outs])
        if provider == "compile":
            f = torch.compile(f, dynamic=False)
    elif provider == "forward_ad":
        if backward:
            pytest.skip("forward_ad: backward through torch.softmax's tangent raises in torch 2.14.1")

        def f():
            with fwAD.dual_level():
                outs = [fwAD.unpack_dual(math_attention(fwAD.make_dual(q, qd[i]), fwAD.make_dual(k, kd[i]),
                                                        fwAD.make_dual(v, vd[i]))) for i in range(T)]
            return outs[0].primal, torch.stack([o.tangent for o in outs])
    else:
        raise ValueError(f"provider={provider!r} is not one of {PROVIDERS}")
    if not backward:
        return f

    def run():
        o, o_dot = f()
        loss = o.square().sum() + (o_dot.square().sum() if o_dot is not None else 0)
        loss.backward()
        return o, o_dot
    return run


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_attention_jvp(run, benchmark, provider, backward, L):
    fn = provider_fn(provider, inputs(L, backward), backward)
    benchmark.group = f"attention_jvp {'fwd+bwd' if backward else 'fwd'} L={L}"
    run(fn, dict(flops=flops(L, backward), B=B, H=H, L=L, E=E, T=T, ideal_ratio_to_plain=1 + 2 * T))


# ---------------------------------------------------------------------------------------------
# For benchmarks/gpu_check.py: correctness against float64, then timings (record, bench: its own)
# ---------------------------------------------------------------------------------------------
def _rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


GPU_CHECK_CASES = [  # batch, L, S, E, Ev, T, tangents, mask
    ((2, 3), 77, 77, 64, 64, 1, "qkv", None), ((2, 3), 130, 61, 32, 48, 3, "qkv", "bool"),
    ((1, 4), 200, 200, 128, 128, 2, "qk", "causal"), ((3,), 65, 129, 24, 40, 1, "v", "float"),
    ((2, 2), 300, 300, 64, 64, 1, "qkv", "causal")]


def gpu_check(record, device="cuda", cases=GPU_CHECK_CASES, tols=((torch.float32, 1e-4), (torch.bfloat16, 3e-2))):
    """sdpa_jvp (Triton on CUDA) against the torch reference in float64 on the same inputs: o, o_dot
    and the gradients of Σ o·g_o + Σ o_dot·g_od for all six inputs, as relative errors."""
    from owf_kernels.attention_jvp import sdpa_jvp_torch
    worst = {}
    for dtype, tol in tols:
        for batch, L, S, Ed, Ev, nT, tangents, mask in cases:
            g = torch.Generator(device=device).manual_seed(L + S)
            r = lambda *s: torch.randn(*s, generator=g, device=device).to(dtype)   # noqa: E731
            prim = [r(*batch, L, Ed), r(*batch, S, Ed), r(*batch, S, Ev)]
            dots = [r(nT, *x.shape) if n in tangents else None for n, x in zip("qkv", prim)]
            kw = {"causal": dict(is_causal=True), None: {},
                  "bool": dict(attn_mask=torch.rand(L, S, generator=g, device=device) > 0.3),
                  "float": dict(attn_mask=torch.randn(*batch, 1, S, generator=g, device=device))}[mask]
            if mask == "bool":
                kw["attn_mask"][:, 0] = True
            xs = [x.requires_grad_(True) if x is not None else None for x in prim + dots]
            ref = [x.detach().double().requires_grad_(True) if x is not None else None for x in xs]
            o, od = sdpa_jvp(*xs, **kw)
            ro, rod = sdpa_jvp_torch(*ref, **kw)
            go, god = torch.randn_like(ro), torch.randn_like(rod)
            have = [x for x in xs if x is not None]
            grads = torch.autograd.grad([o, od], have, [go.to(dtype), god.to(dtype)])
            rgrads = torch.autograd.grad([ro, rod], [x for x in ref if x is not None], [go, god])
            errs = [_rel_err(o, ro), _rel_err(od, rod)] + [_rel_err(a, b) for a, b in zip(grads, rgrads)]
            key = str(dtype)[6:]
            worst[key] = max(worst.get(key, 0.0), max(errs))
            if not all(e < tol for e in errs):          # NaN fails too
                record(section="check sdpa_jvp", status="FAIL", dtype=key, case=(batch, L, S, Ed, Ev, nT, tangents, mask),
                       errors=[f"{e:.2e}" for e in errs])
    ok = all(worst[str(dt)[6:]] < tol for dt, tol in tols)
    record(section="check sdpa_jvp", status="ok" if ok else "FAIL", worst_rel_err={k: f"{v:.1e}" for k, v in worst.items()})
    return worst


def gpu_time(record, bench, compile_ok=lambda: True, lengths=(256, 1024, 4096), heads=(4, 8), Ed=64, nT=1,
             dit=True):
    """Forward+tangent and forward+tangent+backward of sdpa_jvp against func.jvp and
    torch.compile(func.jvp) of the math attention and plain SDPA (flash) forward / forward+backward,
    bf16 and fp32, B·H = heads at L = S in `lengths`, one tangent; plus the issue's DiT (B = 32,
    H = 4, L = 256, E = 32). Records ms, TFLOP/s and the ratios."""
    global B, H, E, T
    saved = (B, H, E, T)
    try:
        shapes = [(heads[0], heads[1], L, Ed) for L in lengths] + ([(32, 4, 256, 32)] if dit else [])
        for dtype in (torch.bfloat16, torch.float32):
            for B, H, L, E in shapes:
                T = nT
                row = dict(section="sdpa_jvp", dtype=str(dtype)[6:], B=B, H=H, L=L, E=E, T=T)
                for backward in (False, True):
                    t = inputs(L, backward, dtype=dtype)
                    mode = "fwd+bwd" if backward else "fwd"
                    leaves = list(t[:3]) if backward else None
                    for prov in ("sdpa_jvp", "plain", "func.jvp", "compile"):
                        if prov == "compile" and not compile_ok():
                            continue
                        try:
                            fn = provider_fn(prov, t, backward)
                            with torch.set_grad_enabled(backward):
                                fn()
                                row[f"{prov}_{mode}_ms"] = bench(fn, leaves)
                        except Exception as e:        # e.g. out of memory for func.jvp's [L, S] tensors
                            row[f"{prov}_{mode}_ms"] = f"error: {type(e).__name__}: {str(e)[:120]}"
                    ms = row.get(f"sdpa_jvp_{mode}_ms")
                    if isinstance(ms, float):
                        row[f"sdpa_jvp_{mode}_TFLOPs"] = flops(L, backward) / ms / 1e9
                        for prov in ("plain", "func.jvp", "compile"):
                            other = row.get(f"{prov}_{mode}_ms")
                            if isinstance(other, float):
                                row[f"{prov}_over_sdpa_jvp_{mode}"] = other / ms
                    del t
                record(**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    finally:
        B, H, E, T = saved


def test_gpu_check_runs(monkeypatch):
    """gpu_check and gpu_time on CPU tensors through the interpreter, tiny: they run and agree."""
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    rows = []
    record = lambda **row: rows.append(row)     # noqa: E731  (gpu_check.record's signature)
    worst = gpu_check(record, device="cpu", cases=[((1, 2), 19, 17, 8, 12, 2, "qkv", "causal")])
    assert rows[-1]["status"] == "ok", rows
    assert worst["float32"] < 1e-4
    gpu_time(record, lambda fn, leaves=None: (fn(), 1.0)[1], compile_ok=lambda: False, lengths=(16,),
             heads=(1, 2), Ed=16, dit=False)
    assert rows[-1]["sdpa_jvp_fwd+bwd_ms"] == 1.0 and B == 8


# ---------------------------------------------------------------------------------------------
# Round robin (python benchmarks/test_bench_attention_jvp.py)
# ---------------------------------------------------------------------------------------------
def round_robin(L, backward, rounds, seed=0):
    """Median seconds per provider over `rounds`; each round calls every provider once, shuffled."""
    fns = {}
    for p in PROVIDERS:
        if p in ("forward_ad", "detached") and backward:
            continue
        fns[p] = provider_fn(p, inputs(L, backward), backward)
    for fn in fns.values():                      # warm-up: compiles, caches, allocator
        fn(), fn()
    times = {p: [] for p in fns}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(fns)
        rng.shuffle(order)
        for p in order:
            t0 = time.perf_counter()
            with torch.set_grad_enabled(backward):
                fns[p]()
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            times[p].append(time.perf_counter() - t0)
    return {p: statistics.median(ts) for p, ts in times.items()}


def main():
    global B, T
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    ap.add_argument("--batch", type=int, default=B)
    ap.add_argument("--tangents", type=int, default=T)
    args = ap.parse_args()
    B, T = args.batch, args.tangents
    torch.set_num_threads(args.threads)
    keep_freed_memory()      # as benchmarks/conftest.py does for pytest: no page faults on reused memory
    print(f"B={B} H={H} E={E} T={T}, {args.threads} thread(s), {args.rounds} rounds, median ms "
          f"(x: time / sdpa_jvp's; /plain: time / plain SDPA's)")
    print("| mode | L | " + " | ".join(PROVIDERS) + " |")
    print("|---|---|" + "---|" * len(PROVIDERS))
    for backward in (False, True):
        for L in args.lengths:
            med = round_robin(L, backward, args.rounds)
            ref, plain = med["sdpa_jvp"], med["plain"]
            cells = [f"{med[p] * 1e3:.2f} ({med[p] / ref:.2f}x, {med[p] / plain:.1f}/plain)" if p in med else "-"
                     for p in PROVIDERS]
            print(f"| {'fwd+bwd' if backward else 'fwd'} | {L} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

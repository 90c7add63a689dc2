"""sdpa_jvp forward+tangent and forward+tangent+backward, swept over the sequence length L = S,
across providers, on a small DiT's attention (B = 8, H = 4 heads of E = 32, T = 1 tangent):

- "sdpa_jvp": owf_kernels' sdpa_jvp (Triton on CUDA, the stacked torch reference on CPU);
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
from owf_kernels.attention_jvp import sdpa_jvp  # noqa: E402

PROVIDERS = ["sdpa_jvp", "func.jvp", "forward_ad", "compile", "plain"]
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
# Round robin (python benchmarks/test_bench_attention_jvp.py)
# ---------------------------------------------------------------------------------------------
def round_robin(L, backward, rounds, seed=0):
    """Median seconds per provider over `rounds`; each round calls every provider once, shuffled."""
    fns = {}
    for p in PROVIDERS:
        if p == "forward_ad" and backward:
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

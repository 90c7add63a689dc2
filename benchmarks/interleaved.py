"""Generator steps and linear_jvp layers timed round-robin: one call of each provider per round, medians over rounds.

    python benchmarks/interleaved.py [--rounds 15] [--threads 2] [--cases NAME ...]

pytest-benchmark times one provider after another, so a machine whose speed drifts during the run
(shared CPUs) skews the ratios between them. Here every round calls each provider once, so drift
hits all of them alike; the ratios are what to read. The order within a round is shuffled (seeded):
a provider's time depends on what ran just before it (caches), by up to 0.15 ms of a 4.5 ms step
in a fixed order here. The ops are those of
test_bench_generator_step.py: the 2D MLP with the exact log-det (B = 512, width 256, T = 2) and the
784-wide MLP with jvp1 (B = 256), forward + log-det + backward; "gemm" is the same GEMMs alone.
And the layer cases of test_bench_linear_jvp.py (tanh; M = 4096 at widths 64/256/1024, T = 1, 2;
M = 256, 1024, 16384 at width 256, T = 1): the forward against a plain forward, forward+backward
against torch.compile. The DCGAN cases (owf_kernels.jvp on the one-way flows), and the network
cases of jvp_networks.py (a MeanFlow step on a DiT and a SongUNet, 8 probes on a residual MLP)
against every provider, compiled or not, and the ideal.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

import jvp_networks as J  # noqa: E402
import providers as P  # noqa: E402
from owf_kernels import keep_freed_memory  # noqa: E402

GENERATOR_CASES = {
    "2D exact, B=512, width 256": (dict(n=2, width=256), 512, "exact",
                                   ["owf", "func.jvp", "func.jvp+vmap", "jacobian", "compile", "manual", "compile-manual"]),
    "784 jvp1, B=256": (dict(n=784, width=784), 256, "jvp1",
                        ["owf", "func.jvp", "forward_ad", "compile", "manual", "compile-manual"]),
}
# linear_jvp (tanh): the forward against a plain forward (target: at most 1.3 (1+T) times it) and
# forward+backward against torch.compile(func.jvp) (target: not slower). name -> (M, W, T)
LAYER_CASES = {**{f"layer W={W} T={T}": (4096, W, T) for W in (64, 256, 1024) for T in (1, 2)},
               **{f"layer M={M} W=256 T=1": (M, 256, 1) for M in (256, 1024, 16384)}}
# owf_kernels.jvp on DCGAN one-way flows (B = 64, T = 1): forward+JVP against (1+T) plain forwards, the
# generator step, and owf.train's training step (Eq. 16 for D, Eq. 17 with Eq. 9 for G) with each
# provider's tangents (providers.dcgan_train_step_fn; "plain": with a tangent that costs nothing).
# name -> key of providers.DCGAN_CASES
DCGAN_CASES = {"dcgan 28x28x1, B=64": "28x28x1", "dcgan 32x32x3, B=64": "32x32x3"}
# owf_kernels.jvp on the networks of flow and consistency models (jvp_networks.py): a MeanFlow step
# on a DiT and a SongUNet (tangent detached), T = 8 probes on a residual MLP (through the tangents)
NETWORK_CASES = {name: name for name in J.CASES}
CASES = {**GENERATOR_CASES, **LAYER_CASES, **DCGAN_CASES, **NETWORK_CASES}
DCGAN_B = 64


def generator_fns(name):
    spec, B, method, providers = GENERATOR_CASES[name]
    G = P.generator(spec["n"], spec["width"])
    fns = {p: (lambda p=p: P.generator_step_fn(p, G, B, method)) for p in providers}
    fns["gemm"] = lambda: P.generator_gemm_fn(G, B, method)
    return fns


def layer_fns(name):
    M, W, T = LAYER_CASES[name]
    t = P.layer_inputs(M, W, W, T)
    fns = {p: (lambda p=p: P.layer_fn(p, t)) for p in ("owf", "plain")}
    fns.update({f"{p} fwd+bwd": (lambda p=p: P.with_backward(P.layer_fn(p, t), t))
                for p in ("owf", "compile", "manual", "compile-manual")})
    return fns


def timed(builders, rounds):
    """Build and warm up each provider (compiling where it does), then `rounds` rounds in which every
    provider runs once, in a shuffled (seeded) order. -> median ms per provider."""
    fns = {}
    for p, build in builders.items():
        try:
            fns[p] = build()
            fns[p]()                                  # warm-up (and compile)
        except Exception as e:                        # noqa: BLE001 - report and go on
            print(f"  {p}: failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
            fns.pop(p, None)
    return {p: s * 1e3 for p, s in round_robin(fns, rounds).items()}


def round_robin(fns: dict, rounds: int) -> dict:
    """One warm-up call of each function, then `rounds` rounds in which each runs once, in a
    shuffled (seeded) order. -> median seconds per function."""
    for f in fns.values():
        f()
    times, order, rng = {k: [] for k in fns}, list(fns), random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def dcgan_fns(name, train_step=True):
    shape, gw, dw = P.DCGAN_CASES[DCGAN_CASES[name]]
    G, D = P.dcgan(shape, gw, dw)
    u, v = P.dcgan_inputs(G, DCGAN_B)
    fns = {}
    for p in ("owf", "owf-batch", "func.jvp", "forward_ad", "compile", "plain"):
        def fwd(p=p):
            f = P.dcgan_jvp_fn(p, G, u, v)
            return lambda: _no_grad(f)
        fns[f"{p} fwd"] = fwd
        if p != "plain":
            fns[f"{p} step"] = lambda p=p: P.dcgan_step_fn(p, G, D, DCGAN_B)
        if train_step:                  # "plain": the step with a tangent that costs nothing, the floor
            fns[f"{p} train"] = lambda p=p: P.dcgan_train_step_fn(p, G, D, DCGAN_B)
    return fns, (G, u, v)


def _no_grad(f):
    with torch.no_grad():
        return f()


def run_dcgan_case(name, rounds):
    fns, (G, u, v) = dcgan_fns(name)
    # one round robin per kind (forward+JVP, generator step, training step): like with like. In one
    # round robin of all 17 (2026-12-01), owf's training step measured 1.18x faster than forward_ad's,
    # against 1.29-1.30x in a round robin of the training steps alone (the cause is not pinned down)
    med = {}
    for kind in ("fwd", "step", "train"):
        med.update(timed({k: f for k, f in fns.items() if k.endswith(" " + kind)}, rounds))
    nan = float("nan")
    print(f"\n{name} ({rounds} rounds per kind, {torch.get_num_threads()} threads; func.jvp and compile on a copy "
          "with replace_all_batch_norm_modules_)\n")
    print("| provider | forward+JVP ms | / (1+T) plain forwards (target <= 1.3) | generator step ms | owf speedup "
          "| training step ms | owf speedup | saved for backward MiB |\n|---|---|---|---|---|---|---|---|")
    plain = med.get("plain fwd", nan)
    for p in ("owf", "owf-batch", "func.jvp", "forward_ad", "compile"):
        try:
            saved = P.saved_bytes(P.dcgan_jvp_fn(p, G, u, v)) / 2 ** 20 if p != "compile" else nan
        except Exception:                              # noqa: BLE001
            saved = nan
        f, st, tr = (med.get(f"{p} {k}", nan) for k in ("fwd", "step", "train"))
        print(f"| {p} | {f:.1f} | {f / (2 * plain):.2f} | {st:.1f} | {st / med.get('owf step', nan):.2f}x "
              f"| {tr:.1f} | {tr / med.get('owf train', nan):.2f}x | {saved:.1f} |")
    tr = med.get("plain train", nan)
    print(f"| plain forward | {plain:.1f} | | | | {tr:.1f} (no tangent: the floor) | {tr / med.get('owf train', nan):.2f}x | |")
    return med


def run_network_case(name, rounds, compile_=True, table=None):
    """Every provider's step and the ideal's pieces in one round robin; the table reads each
    against owf and against the ideal (jvp_networks' docstring), with the memory kept for backward."""
    table = table or J.CASES
    providers = J.PROVIDERS + (J.COMPILED if compile_ else [])
    fns = {p: (lambda p=p: J.step_fn(p, name, table)) for p in providers}
    pieces = J.ideal_fns(name, table)
    pieces_c = J.ideal_fns(name, table, compiled=True) if compile_ else {}
    fns.update({k: (lambda f=f: f) for k, f in {**pieces, **pieces_c}.items()})
    med = timed(fns, rounds)
    ideal = sum(med[k] for k in pieces)
    ideal_c = sum(med[k] for k in pieces_c) if pieces_c and all(k in med for k in pieces_c) else None
    kind, B, T = table[name][0], table[name][2], table[name][3]
    nan = float("nan")
    print(f"\n{name}, B={B}, T={T} ({kind}; {rounds} rounds, {torch.get_num_threads()} threads)\n")
    print("| provider | step ms | owf speedup over it | / ideal | saved for backward MiB |\n|---|---|---|---|---|")
    for p in [p for p in providers if p in med]:
        try:
            saved = J.forward_saved_bytes(p, name, table) / 2 ** 20 if not p.startswith("compile-") else nan
        except Exception:                              # noqa: BLE001
            saved = nan
        print(f"| {p} | {med[p]:.1f} | {med[p] / med['owf']:.2f}x | {med[p] / ideal:.2f} | {saved:.1f} |")
    print(f"| ideal ({' + '.join(pieces)}) | {ideal:.1f} | {ideal / med['owf']:.2f}x | 1.00 | |")
    if ideal_c is not None:
        print(f"| ideal, each piece compiled | {ideal_c:.1f} | {ideal_c / med['owf']:.2f}x | {ideal_c / ideal:.2f} | |")
    others = [p for p in med if p in providers and p not in ("owf", "compile-owf")]
    if others:
        best = min(others, key=med.get)
        print(f"\nowf vs the best other provider ({best}): {med[best] / med['owf']:.2f}x; owf / ideal: "
              f"{med['owf'] / ideal:.2f}")
    compiled = [p for p in others if p.startswith("compile-")]
    if "compile-owf" in med and compiled:
        best = min(compiled, key=med.get)
        print(f"compile-owf vs the best compiled PyTorch provider ({best}): {med[best] / med['compile-owf']:.2f}x"
              + (f"; compile-owf / compiled ideal: {med['compile-owf'] / ideal_c:.2f}" if ideal_c else ""))
    return med


def run_generator_case(name, rounds):
    med = timed(generator_fns(name), rounds)
    jvp_best = min(med[p] for p in med if p.startswith("func.jvp")) if any(p.startswith("func.jvp") for p in med) else None
    print(f"\n{name} ({rounds} rounds, {torch.get_num_threads()} threads)\n")
    print("| provider | median ms | owf speedup over it | / GEMMs alone |\n|---|---|---|---|")
    for p in sorted(med, key=med.get):
        print(f"| {p} | {med[p]:.2f} | {med[p] / med['owf']:.2f}x | {med[p] / med['gemm']:.2f} |")
    if jvp_best:
        print(f"\nowf vs the best torch.func.jvp path: {jvp_best / med['owf']:.2f}x; owf / GEMMs alone: "
              f"{med['owf'] / med['gemm']:.2f}")
    compiled = [p for p in ("compile", "compile-manual") if p in med]
    if compiled:
        print("owf vs " + ", ".join(f"{p}: {med[p] / med['owf']:.2f}x" for p in compiled))
    return med


def run_layer_case(name, rounds):
    M, W, T = LAYER_CASES[name]
    med = timed(layer_fns(name), rounds)
    ratio = med["owf"] / med["plain"]
    nan = float("nan")
    fb = {p: med.get(f"{p} fwd+bwd", nan) for p in ("owf", "compile", "manual", "compile-manual")}
    line = (f"| {M} | {W} | {T} | {med['plain']:.3f} | {med['owf']:.3f} | {ratio:.2f} (≤ {1.3 * (1 + T):.1f}) "
            f"| {fb['owf']:.3f} | {fb['compile']:.3f} ({fb['compile'] / fb['owf']:.2f}x) "
            f"| {fb['manual']:.3f} ({fb['manual'] / fb['owf']:.2f}x) "
            f"| {fb['compile-manual']:.3f} ({fb['compile-manual'] / fb['owf']:.2f}x) |")
    return med, line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile providers of the network cases")
    p.add_argument("--glibc-trim", action="store_true",
                   help="leave glibc's default mmap/trim thresholds (by default keep_freed_memory() is applied, to every provider alike)")
    a = p.parse_args(argv)
    if a.rounds <= 0:
        p.error(f"--rounds must be positive, got {a.rounds}")
    if not a.glibc_trim:
        print(f"keep_freed_memory(): {keep_freed_memory()}")
    if a.threads:
        torch.set_num_threads(a.threads)
    layer_lines = []
    for name in a.cases:
        if name in GENERATOR_CASES:
            run_generator_case(name, a.rounds)
        elif name in DCGAN_CASES:
            run_dcgan_case(name, a.rounds)
        elif name in NETWORK_CASES:
            run_network_case(name, a.rounds, compile_=not a.no_compile)
        else:
            layer_lines.append(run_layer_case(name, a.rounds)[1])
    if layer_lines:
        print(f"\nlinear_jvp, tanh ({a.rounds} rounds, {torch.get_num_threads()} threads)\n")
        print("| M | width | T | plain fwd ms | owf fwd ms | owf / plain (target) | owf fwd+bwd ms "
              "| compile(func.jvp) fwd+bwd ms (owf speedup) | manual fwd+bwd | compile(manual) fwd+bwd |"
              "\n|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(layer_lines))


if __name__ == "__main__":
    main()

"""Where a generator step's time goes on the CPU, op by op, measured inside the step.

    python benchmarks/profile_step.py [--case 2d|784] [--steps 20] [--rounds 30] [--top 25] [--out FILE]

The step is the owf provider's of test_bench_generator_step.py (forward with tangents, log|det J|,
loss, backward into the MLP's parameters): "2d" is the 2D MLP with the exact log-det (B = 512,
width 256, T = 2), "784" the 784-wide MLP with jvp1 (B = 256, T = 1). It prints:

- round robin over `--rounds`: the step, the same GEMMs alone (providers.generator_gemm_fn: the
  floor, on operands that stay in cache between calls) and the step at B = 4, whose time is mostly
  fixed costs (Python, autograd, dispatch; the GEMMs there are small);
- over `--steps` steps under a TorchDispatchMode that reads the clock around each aten op where it
  runs (a view's few µs are mostly the mode's own re-dispatch): the time in GEMMs (mm, addmm, bmm, ...), in the other ops that touch data (elementwise,
  reductions, copies), in views and allocations, and the rest of the step (Python, the autograd
  engine, dispatch), by difference from the step's time without the mode;
- the ops that take longest in the step, with their time when re-run at once on the same inputs
  ("hot": operands in cache; in-place and out= ops re-run on fresh copies of their arguments). An
  op far slower in the step than hot is paying for memory traffic, not arithmetic.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import providers as P  # noqa: E402
from interleaved import round_robin  # noqa: E402
from owf_kernels import keep_freed_memory  # noqa: E402

CASES = {"2d": dict(n=2, width=256, B=512, method="exact"), "784": dict(n=784, width=784, B=256, method="jvp1")}
GEMMS = {"mm", "addmm", "addmm_", "bmm", "baddbmm", "matmul", "addmv", "mv", "dot"}
ALLOCS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


def category(func) -> str:
    name = func.overloadpacket.__name__
    if name in GEMMS:
        return "GEMMs"
    if func.is_view or name in ALLOCS:
        return "views, allocations"
    return "other ops (elementwise, reductions, copies)"


class OpClock(TorchDispatchMode):
    """Times every aten op of the steps run under it (`step`: [((op, input shapes), seconds)] in
    order) and the same call repeated at once (`hot`), except views and allocations."""

    def __init__(self):
        super().__init__()
        self.step, self.hot = [], defaultdict(list)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = time.perf_counter()
        out = func(*args, **kwargs)
        dt = time.perf_counter() - t
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        key = (func, shapes)
        self.step.append((key, dt))
        if category(func) != "views, allocations":
            if func._schema.is_mutable:         # in-place or out=: re-run on copies, just written, so in cache
                args, kwargs = _copies(args), {k: _copies([v])[0] for k, v in kwargs.items()}
            t = time.perf_counter()
            func(*args, **kwargs)
            self.hot[key].append(time.perf_counter() - t)
        return out


def _copies(args):
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def profile(n, width, B, method, steps=20, rounds=30, top=25, small_B=4) -> dict:
    """-> dict(step, gemm_alone, step_small_B (seconds), n_ops, by_category {name: s}, outside (s), ops
    [(name, shapes, calls per step, in-step s, hot s or None)], table (markdown))."""
    G = P.generator(n, width)
    step = P.generator_step_fn("owf", G, B, method)
    med = round_robin({"step": step, "gemm": P.generator_gemm_fn(G, B, method),
                       "small": P.generator_step_fn("owf", G, small_B, method)}, rounds)
    clock = OpClock()
    per_step = []                               # {key: (calls, seconds)} for each step
    for _ in range(steps):
        clock.step = []
        with clock:
            step()
        acc = defaultdict(lambda: [0, 0.0])
        for key, dt in clock.step:
            acc[key][0] += 1
            acc[key][1] += dt
        per_step.append(acc)
    keys = set().union(*per_step)
    ops = []
    for key in keys:
        calls = per_step[0].get(key, (0, 0.0))[0]
        s = statistics.median(a[key][1] if key in a else 0.0 for a in per_step)
        hot = clock.hot.get(key)
        ops.append((key[0], key[1], calls, s, statistics.median(hot) * calls if hot else None))
    n_ops = len(clock.step)                     # aten ops in one step (the last one timed)
    by_cat = defaultdict(float)
    for func, _, _, s, _ in ops:
        by_cat[category(func)] += s
    in_ops = sum(by_cat.values())
    outside = med["step"] - in_ops
    ops.sort(key=lambda o: -o[3])
    ms = lambda s: f"{s * 1e3:.3f}"  # noqa: E731
    lines = [f"## Generator step: n = {n}, width {width}, B = {B}, {method}, {torch.get_num_threads()} threads",
             "",
             f"Round robin, {rounds} rounds (median ms): step **{ms(med['step'])}**, the same GEMMs alone "
             f"**{ms(med['gemm'])}** (step / GEMMs = {med['step'] / med['gemm']:.2f}), the step at "
             f"B = {small_B} **{ms(med['small'])}**. The step runs {n_ops} aten ops: at B = {small_B}, where "
             f"data is negligible, that is {med['small'] / n_ops * 1e6:.1f} µs of fixed cost per op.",
             "",
             f"Inside the step ({steps} steps under the op clock, medians per step):",
             "",
             "| where | ms per step | share of the step |", "|---|---|---|"]
    for name in ("GEMMs", "other ops (elementwise, reductions, copies)", "views, allocations"):
        lines.append(f"| {name} | {ms(by_cat[name])} | {by_cat[name] / med['step']:.0%} |")
    lines += [f"| the rest: Python, autograd, dispatch (step − ops) | {ms(outside)} | {outside / med['step']:.0%} |",
              "", f"The {top} ops that take longest (all calls of one op on one set of input shapes):", "",
              "| op | input shapes | calls | in the step, µs | hot, µs | step / hot |", "|---|---|---|---|---|---|"]
    for func, shapes, calls, s, hot in ops[:top]:
        ratio = f"{s / hot:.1f}" if hot else ""
        hot_s = f"{hot * 1e6:.0f}" if hot else ""
        lines.append(f"| {func.overloadpacket.__name__}.{func._overloadname} | {' '.join(map(str, shapes))} "
                     f"| {calls} | {s * 1e6:.0f} | {hot_s} | {ratio} |")
    return dict(step=med["step"], gemm_alone=med["gemm"], step_small_B=med["small"], n_ops=n_ops, by_category=dict(by_cat),
                outside=outside, ops=[(f.overloadpacket.__name__, sh, c, s, h) for f, sh, c, s, h in ops],
                table="\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=list(CASES), nargs="+", default=list(CASES))
    p.add_argument("--steps", type=int, default=20, help="steps under the op clock")
    p.add_argument("--rounds", type=int, default=30, help="round-robin rounds for the step's own time")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", help="also write the tables to this markdown file")
    a = p.parse_args(argv)
    for name in ("steps", "rounds", "top"):
        if getattr(a, name) <= 0:
            p.error(f"--{name} must be positive, got {getattr(a, name)}")
    keep_freed_memory()                         # as in the other benchmarks
    if a.threads:
        torch.set_num_threads(a.threads)
    tables = [profile(**CASES[c], steps=a.steps, rounds=a.rounds, top=a.top)["table"] for c in a.case]
    text = "\n\n".join(tables)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

"""One GPU run (issue 31): check every kernel against its reference on the GPU, run the user commands
there, the AIS bracket of a trained model at many chains, then time the steps against the baselines.
Installs nothing; records the GPU, torch, triton and CUDA versions; prints a markdown table at the end;
writes JSON and the table to --out (default: $OUT or benchmarks/results).

    python benchmarks/gpu_check.py [--budget 480] [--sections a,b] [--out DIR]
    python benchmarks/gpu_check.py --dry-run      # the sections and cases it would run, on any machine
    python benchmarks/gpu_check.py --rehearse     # the user commands and the AIS section, toy sizes, on the CPU

What the GPU machine cannot fetch travels in gpu_carry/ (ignored by git; `--pack RUN` fills it; the
command is in docs/benchmarks.md): Fashion-MNIST's IDX files, the project's FID classifier, and a
trained run for the AIS section.

Sections (each guarded, so one failure does not lose the rest; past the deadline the rest are skipped;
--sections runs the named ones, in its order, ceilings first and pytest last). By default, in this order:
 ceilings: device-to-device copy bandwidth, fp32 and bf16 GEMM rates (cuBLAS)
 check_linear_jvp, check_log_zeta: linear_jvp (every activation, odd shapes, T = 1, 2, 5, 9, fp32/bf16,
    every gradient), mlp_jvp (the Triton chain), jvp's Triton layer epilogue and log_zeta (S up to 1e8,
    extreme values, -inf, gradients) against float64 references
 user: the README's commands on --device cuda, each in its own process and time cap: owf.train on
    Fashion-MNIST (300 steps), owf.evaluate on it (small S and K), owf.train on the ring (2000 steps)
 ais: the AIS / RAISE bracket of the trained run (--run) with 4096 chains, K = 1000, 2000, ... while
    the next rung fits in --ais-seconds
 generator: generator steps (2D exact log-det against its GEMMs; 784-wide jvp1)
 dcgan: owf_kernels.jvp on the DCGAN one-way flows (28x28x1, 32x32x3; B = 64, T = 1; fp32 and bf16):
    its tangents against forward_ad's, then forward+JVP, the generator step and an owf training
    step against torch.func.jvp, forward_ad and torch.compile(func.jvp), with the peak memory of each;
    "owf-torch-epilogue" is owf with the torch epilogue instead of the Triton one (which to keep)
 networks: owf_kernels.jvp on the networks of flow and consistency models (jvp_networks.py): a MeanFlow
    step on a DiT and on a SongUNet (32x32x1, B = 32), T = 8 probes on a residual MLP: owf's tangents
    against forward_ad's (math attention), then every provider's step (compiled too) and the ideal's
    pieces, with the peak memory of each; "owf-torch-chains" is owf with its elementwise chains in torch
    ops instead of one generated Triton kernel each (jvp_chain)
 check_sdpa_jvp, time_sdpa_jvp: the attention JVP kernel against its float64 reference, then timed against
    SDPA, func.jvp and compile (benchmarks/test_bench_attention_jvp.py, docs/attention_jvp.md)
 pytest: the kernel test files under pytest on the GPU, if time is left
Named only (measured on 2026-11-28): time_log_zeta, time_linear_jvp (T = 1, M = 4096, K = N in --sizes,
owf against func.jvp, compiled and the GEMMs), sweep_log_zeta (launch shapes), profile (host time).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import providers as P  # noqa: E402
from owf_kernels import (ACTIVATIONS, linear_jvp, linear_jvp_torch, log_zeta, log_zeta_partials,  # noqa: E402
                         mlp_jvp, mlp_jvp_torch)

RESULTS: list[dict] = []
SAVE: Path | None = None    # main() sets $OUT/gpu_results.json, rewritten at each record: a killed run keeps them
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def record(**row):
    RESULTS.append(row)
    log(json.dumps(row))
    save()


def save():
    if SAVE is not None:
        SAVE.write_text(json.dumps(RESULTS, indent=1, default=str))


def bench(fn, grad_to_none=None):
    return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def section(name, deadline):
    def wrap(f):
        def run(*a, **k):
            if time.time() > deadline:
                record(section=name, status="skipped: out of time")
                return None
            log(f"== {name}")
            try:
                return f(*a, **k)
            except Exception as e:  # keep going: one broken section must not lose the others
                record(section=name, status=f"error: {type(e).__name__}: {e}")
                traceback.print_exc()
                return None
        return run
    return wrap


# ---------------------------------------------------------------------------------------------
def ceilings():
    x = torch.empty(2 ** 29, dtype=torch.float32, device="cuda").uniform_()      # 2 GiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    copy_gbs = 2 * x.numel() * 4 / ms / 1e6
    out = {"copy_GBps": copy_gbs}
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(4096, 4096, device="cuda", dtype=dt)
        b = torch.randn(4096, 4096, device="cuda", dtype=dt)
        ms = bench(lambda: a @ b)
        out[f"gemm_{str(dt)[6:]}_TFLOPs"] = 2 * 4096 ** 3 / ms / 1e9
    record(section="ceilings", **{k: round(v, 1) for k, v in out.items()})
    del x, y
    return out


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_linear_jvp():
    os.environ["OWF_KERNELS_AUTOTUNE"] = "0"        # one tile per specialisation: quick to compile
    worst = {}
    shapes = [(1, 5, 3, 1), (129, 20, 18, 5), (300, 64, 96, 9), (1000, 256, 130, 1)]
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        acts = ACTIVATIONS if dtype == torch.float32 else ("tanh", "silu")
        for act in acts:
            for (M, K, N, T) in shapes:
                t = P.layer_inputs(M, K, N, T, dtype=dtype, device="cuda", seed=M + K)
                xs = [t[k] for k in ("x", "xd", "W", "b")]
                ref = [v.detach().double().requires_grad_(True) for v in xs]
                torch.cuda.synchronize()
                y, yd = linear_jvp(*xs, act)
                ry, ryd = linear_jvp_torch(*ref, act)
                g = torch.autograd.grad([y, yd], xs, [t["gy"], t["gyd"]])
                rg = torch.autograd.grad([ry, ryd], ref, [t["gy"].double(), t["gyd"].double()])
                errs = [rel_err(y, ry), rel_err(yd, ryd)] + [rel_err(a, b) for a, b in zip(g, rg)]
                key = f"{str(dtype)[6:]}"
                worst[key] = max(worst.get(key, 0), max(errs))
                bad = [e for e in errs if not e < tol]     # NaN fails too
                if bad:
                    record(section="check linear_jvp", status="FAIL", dtype=key, act=act, shape=(M, K, N, T),
                           errors=[f"{e:.2e}" for e in errs])
    # non-contiguous inputs
    t = P.layer_inputs(64, 48, 40, 2, device="cuda")
    x_nc = t["x"].detach().t().contiguous().t()
    xd_nc = t["xd"].detach().permute(1, 0, 2).contiguous().permute(1, 0, 2)
    errs = [rel_err(a, b) for a, b in zip(linear_jvp(x_nc, xd_nc, t["W"], t["b"], "tanh"),
                                          linear_jvp_torch(x_nc.double(), xd_nc.double(), t["W"].double(),
                                                           t["b"].double(), "tanh"))]
    worst["noncontig"] = max(errs)
    worst["mlp_jvp"] = check_mlp_jvp()
    # cuDNN runs fp32 convolutions in TF32 by default (torch.backends.cudnn.allow_tf32), 10 mantissa bits:
    # against float64 that, not the epilogue, is what a check with it on measures (2.0e-2 on the H200,
    # 2026-12-04, over the 1e-5 of the CPU). The check turns it off; the error with it on is kept as a note.
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        worst["jvp_epilogue"] = check_jvp_epilogue()
        worst["jvp_chain"], launches = check_jvp_chain()        # the SongUNet's convolutions: TF32 off too
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    note = {"jvp_epilogue_with_cudnn_tf32": f"{check_jvp_epilogue():.1e}"} if tf32 else {}
    note["jvp_chain_launches"] = launches
    os.environ.pop("OWF_KERNELS_AUTOTUNE")
    record(section="check linear_jvp", status="ok" if all(v < 2e-2 for v in worst.values()) else "FAIL",
           worst_rel_err={k: f"{v:.1e}" for k, v in worst.items()}, **note)


@contextlib.contextmanager
def kernels_backend(name):
    """OWF_KERNELS_BACKEND=name inside the block (None: as it is), restored after."""
    old = os.environ.get("OWF_KERNELS_BACKEND")
    if name is not None:
        os.environ["OWF_KERNELS_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("OWF_KERNELS_BACKEND", None)
        if old is not None:
            os.environ["OWF_KERNELS_BACKEND"] = old


def check_mlp_jvp(device="cuda"):
    """mlp_jvp (chained Triton launches on CUDA) against its torch path in float64: a 2D generator's
    identity tangents and a 3-layer MLP with random tangents; values and every gradient. -> worst error."""
    errs = []
    for n, width, T in ((2, 64, 2), (24, 40, 1)):
        Ws, bs = [], []
        for a, b in zip([n, width, width], [width, width, n]):
            Ws.append((torch.randn(b, a, device=device) / a ** 0.5).requires_grad_(True))
            bs.append(torch.randn(b, device=device).requires_grad_(True))
        x = torch.randn(300, n, device=device)
        xd = torch.eye(n, device=device)[:T].unsqueeze(1).expand(T, 300, n) if n == 2 else torch.randn(T, 300, n, device=device)
        ps = Ws + bs
        rps = [p.detach().double().requires_grad_(True) for p in ps]
        y, yd = mlp_jvp(x, xd, Ws, bs, "tanh")
        ry, ryd = mlp_jvp_torch(x.double(), xd.double(), rps[:3], rps[3:], "tanh")
        gy, gyd = torch.randn_like(ry), torch.randn_like(ryd)
        g = torch.autograd.grad([y, yd], ps, [gy.float(), gyd.float()])
        rg = torch.autograd.grad([ry, ryd], rps, [gy, gyd])
        errs += [rel_err(y, ry), rel_err(yd, ryd)] + [rel_err(a, b) for a, b in zip(g, rg)]
    return max(errs)


def check_jvp_epilogue(device="cuda", acts=None):
    """owf_kernels.jvp's Triton layer epilogue (jvp_epilogue_triton) against its torch reference in
    float64: conv, transposed-conv and Linear layers with BatchNorm (train, both modes; eval) and
    every activation with a Triton rule; values, the running statistics and every gradient of a
    loss nonlinear in the tangents. -> worst relative error."""
    import copy
    import torch.nn as nn
    from owf_kernels import jvp
    errs = []
    acts = acts or [nn.LeakyReLU(0.2), nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.Softplus(), nn.SiLU(), nn.ELU()]
    for i, act in enumerate(acts):
        for mode in ("batch", "per_sample"):
            torch.manual_seed(i)
            net = nn.Sequential(nn.ConvTranspose2d(5, 8, 4, 2, 1), nn.BatchNorm2d(8), act,
                                nn.Conv2d(8, 6, 3, 1, 1), nn.BatchNorm2d(6), copy.deepcopy(act),
                                nn.Flatten(), nn.Linear(6 * 14 * 14, 32), nn.BatchNorm1d(32), nn.Tanh(),
                                nn.Linear(32, 16)).to(device)
            ref = copy.deepcopy(net).double()
            x, v = torch.randn(17, 5, 7, 7, device=device), torch.randn(3, 17, 5, 7, 7, device=device)
            y, yd = jvp(net, (x,), (v,), batch_norm=mode)
            with kernels_backend("torch"):
                ry, ryd = jvp(ref, (x.double(),), (v.double(),), batch_norm=mode)
            loss = lambda y, yd: y.square().sum() + yd.flatten(2).norm(dim=-1).log().sum()  # noqa: E731
            g = torch.autograd.grad(loss(y, yd), list(net.parameters()))
            rg = torch.autograd.grad(loss(ry, ryd), list(ref.parameters()))
            # the gradients as one vector: a bias before a train-mode BatchNorm has a zero gradient
            # (1e-15 in float64), to which a relative error means nothing
            flat = lambda gs: torch.cat([t.reshape(-1) for t in gs])  # noqa: E731
            errs += [rel_err(y, ry), rel_err(yd, ryd), rel_err(flat(g), flat(rg))]
            errs += [rel_err(a, b) for a, b in zip(net.buffers(), ref.buffers()) if a.is_floating_point()]
    return max(errs)


def check_jvp_chain(device="cuda"):
    """owf_kernels.jvp's elementwise chains (jvp_chain_triton) on jvp_networks' smoke DiT and SongUNet in
    float32, against the torch backend in float64: y, the tangents and every gradient, tangent_grad
    both ways. -> (worst relative error, how many chain kernels ran). A kernel that fails would fall back
    to the torch path with a warning, and the check would compare the torch path with itself: here that
    warning is an error."""
    import jvp_networks as J
    import owf_kernels.jvp_chain_triton as C
    from owf_kernels import jvp
    launches, real = [], C._launch
    C._launch = lambda chain, *a: launches.append(chain.names) or real(chain, *a)
    errs = []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="owf_kernels.jvp: the Triton kernel of the elementwise chain",
                                    category=RuntimeWarning)
            for case in ("meanflow DiT 32x32x1", "meanflow SongUNet 32x32x1"):
                errs += _chain_case(J, jvp, case, device)
    finally:
        C._launch = real
    return max(errs), len(launches)


def _chain_case(J, jvp, case, device):
    """check_jvp_chain's relative errors on one smoke network."""
    _, net, _, B, T = J.build(case, J.SMOKE, device)
    ref = copy.deepcopy(net).double()
    x = torch.randn(B, *net.image, device=device)
    t, r = torch.rand(B, device=device), torch.rand(B, device=device)
    v = torch.randn(1, *x.shape, device=device)
    tv, rv = torch.ones(1, B, device=device), torch.zeros(1, B, device=device)
    errs = []
    for tangent_grad in (True, False):
        outs = []
        for model, dtype, backend in ((net, torch.float32, None), (ref, torch.float64, "torch")):
            with kernels_backend(backend):
                prim, tans = tuple(a.to(dtype) for a in (x, t, r)), tuple(a.to(dtype) for a in (v, tv, rv))
                y, yd = jvp(model, prim, tans, tangent_grad=tangent_grad)
                loss = y.square().sum() + (yd.flatten(1).norm(dim=1).log().sum() if tangent_grad else 0)
                g = torch.autograd.grad(loss, list(model.parameters()))
                outs.append((y, yd, torch.cat([a.reshape(-1) for a in g])))
        errs += [rel_err(a, b) for a, b in zip(*outs)]
    return errs


def check_log_zeta():
    """Value: relative to max(1, |ref|), below 1e-6 or, at large S, the a-priori bound of an fp32 sum
    of S positive terms by blocks and a tree, log2(S) u (u = 2^-24; 1.6e-6 at S = 1e8, where the H200
    measured 7.0e-7 and 1.5e-6 on two unseeded draws) plus 1e-7 for the terms' own rounding.
    Gradients exp(l - lse): their relative error is the absolute error of l - lse, i.e. fp32 spacing at
    |l| (2.4e-4 at |l| ~ 3e3), so the tolerance scales with max |l|. Seeded: the same draws on every run."""
    worst_val, worst_grad, worst_ratio = 0.0, 0.0, 0.0
    ok = True
    torch.manual_seed(0)
    for S in (1, 3, 1000, 100003, 10 ** 8):
        tol = max(1e-6, 1e-7 + math.log2(S) * 2.0 ** -24)   # 1e-6, as before, up to S ~ 1e7
        for scale in (1.0, 1e3):
            d = torch.randn(S, device="cuda") * scale * 0.1
            lq = torch.randn(S, device="cuda") * scale
            out = log_zeta(d, lq, 0.1).double().item()
            l64 = d.double() / 0.1 - lq.double()
            ref = (torch.logsumexp(l64, 0) - math.log(S)).item()
            e = abs(out - ref) / max(1.0, abs(ref))
            worst_val, worst_ratio = max(worst_val, e), max(worst_ratio, e / tol)
            ok &= e < tol
            if S <= 100003:
                d.requires_grad_(True)
                lq.requires_grad_(True)
                gd, gl = torch.autograd.grad(log_zeta(d, lq, 0.1), (d, lq))
                p = torch.softmax(l64, 0)
                eg = max(rel_err(gd, p / 0.1), rel_err(gl, -p))
                worst_grad = max(worst_grad, eg)
                ok &= eg < 1e-6 * max(10.0, l64.abs().max().item())
            del d, lq
    inf = torch.full((5,), float("-inf"), device="cuda")
    all_inf = log_zeta(inf, torch.zeros(5, device="cuda")).item()
    part = log_zeta_partials(torch.randn(10 ** 6, device="cuda"), torch.zeros(10 ** 6, device="cuda"))
    record(section="check log_zeta", status="ok" if ok and all_inf == -math.inf else "FAIL",
           worst_value_rel_err=f"{worst_val:.1e}",
           worst_value_over_bound=round(worst_ratio, 2), worst_grad_rel_err=f"{worst_grad:.1e}",
           all_neg_inf=all_inf, partials_count=float(part[3]))


def sweep_log_zeta(copy_gbs):
    """Launch shapes of the log_zeta reduction at S = 1e8; the default is reported beside the best."""
    from owf_kernels.log_zeta_triton import _partials
    S = 10 ** 8
    d = torch.randn(S, device="cuda")
    lq = torch.randn(S, device="cuda")
    res = []
    for block in (1024, 2048, 4096):
        for pps in (4, 8, 16):
            for warps in (4, 8):
                ms = bench(lambda: _partials(d, lq, 0.1, block, pps, warps))
                res.append((ms, block, pps, warps))
    res.sort()
    best = res[0]
    record(section="log_zeta launch sweep (S=1e8)", best=dict(block=best[1], programs_per_sm=best[2], warps=best[3],
           ms=round(best[0], 4), GBps=round(8 * S / best[0] / 1e6, 1),
           frac_of_copy=round(8 * S / best[0] / 1e6 / copy_gbs, 3) if copy_gbs else None),
           all=[(round(r[0], 4), r[1], r[2], r[3]) for r in res])


def profile_owf():
    """Where the host time of one owf layer forward+backward goes (small layer, launch-bound)."""
    import cProfile
    import io
    import pstats
    t = P.layer_inputs(4096, 256, 256, 1, device="cuda")
    fn = P.with_backward(P.layer_fn("owf", t), t)
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / 200 * 1e3
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(14)
    print(buf.getvalue()[-3500:])
    record(section="profile owf layer fwd+bwd (4096x256)", wall_ms_per_call=round(wall, 4))


def time_linear_jvp(sizes, compile_ok):
    T, M = 1, 4096
    for dtype in (torch.float32, torch.bfloat16):
        for KN in sizes:
            t = P.layer_inputs(M, KN, KN, T, dtype=dtype, device="cuda")
            leaves = [t[k] for k in ("x", "xd", "W", "b")]
            row = dict(section="linear_jvp fwd+bwd", dtype=str(dtype)[6:], M=M, K=KN, N=KN, T=T)
            flops = P.layer_flops(M, KN, KN, T, backward=True)
            row["gemm_ms"] = bench(P.gemm_fn(t, backward=True))
            row["owf_ms"] = bench(P.with_backward(P.layer_fn("owf", t), t), leaves)
            row["owf_fwd_ms"] = bench(lambda: P.layer_fn("owf", t)())
            row["plain_fwd_ms"] = bench(lambda: P._plain(t, "tanh"))
            ref = linear_jvp_torch(*[v.detach().double() for v in leaves], "tanh")[1]
            row["owf_rel_err"] = f"{rel_err(P.layer_fn('owf', t)()[1], ref):.1e}"
            if dtype == torch.float32:
                os.environ["OWF_KERNELS_FP32_DOT"] = "ieee"
                try:
                    row["owf_ieee_ms"] = bench(P.with_backward(P.layer_fn("owf", t), t), leaves)
                finally:
                    os.environ.pop("OWF_KERNELS_FP32_DOT")
            for prov in ("manual", "func.jvp", "compile", "compile-manual"):
                if prov.startswith("compile") and not compile_ok():
                    continue
                try:
                    fn = P.with_backward(P.layer_fn(prov, t), t)
                    fn()
                    row[f"{prov}_ms"] = bench(fn, leaves)
                except Exception as e:
                    row[f"{prov}_ms"] = f"error: {type(e).__name__}: {str(e)[:160]}"
            row["owf_TFLOPs"] = flops / row["owf_ms"] / 1e9
            row["speedup_vs_func.jvp"] = row["func.jvp_ms"] / row["owf_ms"]
            compiled = [row[k] for k in ("compile_ms", "compile-manual_ms") if isinstance(row.get(k), float)]
            if compiled:
                row["speedup_vs_best_compile"] = min(compiled) / row["owf_ms"]
            row["owf_over_gemm"] = row["owf_ms"] / row["gemm_ms"]
            record(**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
            del t, leaves


def time_log_zeta(copy_gbs):
    for S in (10 ** 6, 10 ** 8):
        d = torch.randn(S, device="cuda")
        lq = torch.randn(S, device="cuda")
        ms = bench(lambda: log_zeta(d, lq, 0.1))
        ref_ms = bench(lambda: torch.logsumexp(d / 0.1 - lq, 0))
        gbs = 2 * S * 4 / ms / 1e6
        record(section="log_zeta fwd", S=S, owf_ms=round(ms, 4), torch_logsumexp_ms=round(ref_ms, 4),
               GBps=round(gbs, 1), frac_of_copy=round(gbs / copy_gbs, 3) if copy_gbs else None)
        del d, lq


def time_generator_steps(compile_ok):
    for name, n, width, B, method, provs in (
            ("2D exact (T=2)", 2, 256, 512, "exact",
             ("owf", "func.jvp", "func.jvp+vmap", "jacobian", "manual", "compile", "compile-manual")),
            ("784-wide jvp1 (T=1)", 784, 784, 256, "jvp1", ("owf", "func.jvp", "forward_ad", "manual", "compile",
                                                           "compile-manual"))):
        G = P.generator(n, width, device="cuda")
        row = dict(section="generator step", case=name, B=B, width=width)
        row["gemm_ms"] = bench(P.generator_gemm_fn(G, B, method))
        for prov in provs:
            if prov.startswith("compile") and not compile_ok():
                continue
            try:
                fn = P.generator_step_fn(prov, G, B, method)
                fn()
                row[f"{prov}_ms"] = round(bench(fn), 4)
            except Exception as e:
                row[f"{prov}_ms"] = f"error: {type(e).__name__}: {str(e)[:160]}"
        record(**row)


DCGAN_ROWS = [P.DCGAN_PROVIDERS[0], "owf-torch-epilogue", *P.DCGAN_PROVIDERS[1:]]


def time_dcgan(compile_ok):
    import importlib
    from owf_kernels.jvp_layers import epilogue_torch
    J = importlib.import_module("owf_kernels.jvp_runner")     # the runner's layer-epilogue dispatch
    triton_dispatch = J._epilogue

    def torch_dispatch(A, bias, bn, act, act_module, batch_norm, update_stats, bias_last):
        return epilogue_torch(A, bias, bn, act, batch_norm, update_stats, bias_last)
    for name, (shape, gw, dw) in P.DCGAN_CASES.items():
        for dtype in (torch.float32, torch.bfloat16):
            G, D = P.dcgan(shape, gw, dw, device="cuda", dtype=dtype)
            B = 64
            row = dict(section="dcgan jvp", case=name, dtype=str(dtype)[6:], B=B)
            u, v = P.dcgan_inputs(G, B)
            # the reference: forward_ad on a float32 copy (bf16 forward_ad on CUDA met a float32 input in a
            # bf16 ConvTranspose2d on 2026-12-04; the CPU's runs)
            with torch.no_grad():
                _, a = P.dcgan_jvp_fn("owf-batch", G, u, v)()
                _, b = P.dcgan_jvp_fn("forward_ad", copy.deepcopy(G).float(), u.float(), v.float())()
            row["tangent_rel_err_vs_forward_ad_fp32"] = f"{rel_err(a, b):.1e}"
            for prov in DCGAN_ROWS:
                if prov == "compile" and not compile_ok():
                    continue
                # "owf-torch-epilogue": owf with its layers' epilogue in torch ops instead of the Triton
                # kernel (jvp's dispatch patched for the row; the rest, mlp_jvp included, as in "owf")
                torch_epilogue = prov == "owf-torch-epilogue"
                if torch_epilogue:
                    J._epilogue = torch_dispatch
                    prov, name_as = "owf", prov
                else:
                    name_as = prov
                for what, make in (("fwd", lambda p: (lambda f: lambda: _no_grad(f))(P.dcgan_jvp_fn(p, G, u, v))),
                                   ("step", lambda p: P.dcgan_step_fn(p, G, D, B)),
                                   ("train", lambda p: P.dcgan_train_step_fn(p, G, D, B))):
                    try:
                        fn = make(prov)
                        fn()
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                        row[f"{name_as}_{what}_ms"] = round(bench(fn), 4)
                        row[f"{name_as}_{what}_peak_MiB"] = round((torch.cuda.max_memory_allocated() - base) / 2 ** 20, 1)
                    except Exception as e:
                        row[f"{name_as}_{what}_ms"] = f"error: {type(e).__name__}: {str(e)[:120]}"
                if torch_epilogue:
                    J._epilogue = triton_dispatch
            record(**row)


def _no_grad(f):
    with torch.no_grad():
        return f()


def time_networks(compile_ok, table=None, device="cuda"):
    """Section 7: jvp_networks' cases on the GPU (float32), one row per case."""
    import importlib
    import jvp_networks as J
    CH = importlib.import_module("owf_kernels.jvp_chain")     # the chains' Triton-or-torch dispatch
    chains_on_triton = CH._triton_applies
    table = table or J.CASES
    for case in table:
        kind, net, math_net, B, T = J.build(case, table, device)
        row = dict(section="jvp networks", case=case, kind=kind, B=B, T=T)
        d = J.inputs(kind, net, B, T)
        with torch.no_grad():
            _, a = J.jvp_fn("owf", kind, net, math_net, d)()
            _, b = J.jvp_fn("forward_ad", kind, net, math_net, d)()
        row["tangent_rel_err_vs_forward_ad"] = f"{rel_err(a, b):.1e}"
        del net, math_net, d
        fns = {p: (lambda p=p: J.step_fn(p, case, table, device)) for p in J.PROVIDERS + J.COMPILED}
        # "owf-torch-chains": owf with its elementwise chains as torch ops (jvp_chain's reference)
        # instead of one generated Triton kernel each (which to keep)
        fns["owf-torch-chains"] = lambda: J.step_fn("owf", case, table, device)
        pieces = J.ideal_fns(case, table, device)
        fns["ideal"] = lambda: (lambda: [f() for f in pieces.values()])
        for prov, make in fns.items():
            if prov.startswith("compile-") and not compile_ok():
                continue
            CH._triton_applies = (lambda leaves: False) if prov == "owf-torch-chains" else chains_on_triton
            try:
                fn = make()
                fn()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                row[f"{prov}_ms"] = round(bench(fn), 4)
                row[f"{prov}_peak_MiB"] = round((torch.cuda.max_memory_allocated() - base) / 2 ** 20, 1)
            except Exception as e:
                row[f"{prov}_ms"] = f"error: {type(e).__name__}: {str(e)[:120]}"
            finally:
                CH._triton_applies = chains_on_triton
        record(**row)


def _run_cli(args, seconds, env=None):
    """`python -m ARGS` in a child process, capped at `seconds`: -> (rc, wall_s, its last stdout line, or
    on failure its stderr's tail when it wrote one)."""
    t = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=seconds,
                           cwd=HERE.parent, env=dict(os.environ, **(env or {})))
        last = (p.stdout.strip().splitlines() or [""])[-1][-300:]
        tail = p.stderr[-1500:] if p.returncode != 0 and p.stderr.strip() else last
        return p.returncode, round(time.time() - t, 1), tail
    except subprocess.TimeoutExpired:
        return "timeout", round(time.time() - t, 1), f"killed after {seconds} s"


def _keys(path, keys):
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {k: (round(d[k], 4) if isinstance(d[k], float) else d[k]) for k in keys if k in d}


def user_commands(out, data_root, device="cuda", fm_steps=300, ring_steps=2000, eval_args=(), caps=(300, 150, 150),
                  train_args=()):
    """Section 2 of issue 31: the README's commands on `device`, each in its own process and time cap:
    a Fashion-MNIST run (the IDX files from `data_root`; the defaults' copula base is fitted by EM on the
    CPU first, 180 s at 2 threads here, and the run ends with the 400 steps of the catch-up phase), owf.evaluate
    on it at a small S and K, and a ring run. Records each one's exit status, wall time and headline numbers; keeps their pictures."""
    runs = Path("/tmp/owf_user_runs")
    fm, ring = runs / "fm", runs / "ring"
    rc, wall, tail = _run_cli(["owf.train", "--data", "fashion-mnist", "--steps", str(fm_steps), "--device", device,
                               "--data-root", str(data_root), "--out", str(fm), "--overwrite", *train_args], caps[0])
    record(section="user: owf.train fashion-mnist", steps=fm_steps, rc=rc, wall_s=wall, result=tail,
           **_keys(fm / "metrics.json", ("seconds", "fid", "min_class_share", "probe_log_q", "saturated")))
    if rc == 0:
        rc, wall, tail = _run_cli(["owf.evaluate", str(fm), "--device", device, *eval_args], caps[1])
        record(section="user: owf.evaluate (fashion-mnist run)", args=" ".join(eval_args), rc=rc, wall_s=wall,
               result=tail, **_keys(fm / "eval.json", ("ais_bits_per_dim", "raise_bits_per_dim", "converged",
                                                         "log_zeta_is", "ess_is", "seconds_per_exact_sample")))
    rc, wall, tail = _run_cli(["owf.train", "--steps", str(ring_steps), "--device", device, "--out", str(ring),
                               "--overwrite"], caps[2])
    record(section="user: owf.train ring", steps=ring_steps, rc=rc, wall_s=wall, result=tail,
           **_keys(ring / "metrics.json", ("seconds", "modes", "hq", "log_zeta", "ess")))
    for src, name in ((fm / "samples.png", "user_fm_samples.png"), (fm / "ais_convergence.png", "user_fm_ais.png"),
                      (ring / "samples.png", "user_ring_samples.png")):
        if src.exists():
            (Path(out) / name).write_bytes(src.read_bytes())


def ais_large_k(run, data_root, seconds, device="cuda", chains=4096, k0=1000, k_max=128_000, raise_points=64,
                base="defensive"):
    """Section 4: the AIS / RAISE bracket of a trained image model (owf.image_eval.likelihood_bracket,
    one rung at a time) at many more chains than the CPU affords (64 there), K = k0, 2 k0, ... while
    the next rung, at twice the last one's time, fits in `seconds`. One record per rung."""
    from owf.density import load
    from owf.image_eval import likelihood_bracket
    from owf.images import load_images
    t_end = time.time() + seconds
    model = load(run, device)
    model.config.data_root = str(data_root)          # the bases fit to the training split read it
    test_u8, _ = load_images(model.config.data, str(data_root), train=False)
    K, last = k0, 0.0
    while K <= k_max and time.time() + 2.2 * last < t_end:
        t = time.time()
        res = likelihood_bracket(model, test_u8, ladder=(K,), bases=(base,), chains=chains, raise_points=raise_points,
                                 progress=False, replicates=1)
        r = res["ais_rows"][0]
        last = time.time() - t
        record(section="ais large K", run=str(run), base=base, chains=chains, K=K, rung_seconds=round(last, 1),
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                  if k in ("log_zeta", "se", "ess", "log_weight_var", "seconds", "raise_seconds", "ais_bits_per_dim",
                           "ais_bits_per_dim_subset", "raise_bits_per_dim", "raise_bits_per_dim_se", "accept",
                           "raise_accept")})
        K *= 2


def in_child(name, expr, seconds, env=None):
    """Run `expr` (gpu_check imported as GC, the attention benchmarks as ATT) in a child Python capped
    at `seconds`, for sections that compile many Triton kernels: one past its cap is killed, not the
    whole run (the attention check's autotuner took the rest of a 7-minute run on 2026-12-04). Its
    log streams through; each record is saved as it is made, so a killed child keeps what it finished."""
    import tempfile
    # beside gpu_results.json when there is one: a parent killed while the child runs leaves both
    rows = (SAVE.parent if SAVE else Path(tempfile.mkdtemp())) / f"child_{name.replace(' ', '_')}.json"
    code = (f"import sys, time\nfrom pathlib import Path\nsys.path.insert(0, {str(HERE)!r})\nimport gpu_check as GC\n"
            f"import test_bench_attention_jvp as ATT\nT_END = time.time() + {seconds}\n"
            f"GC.SAVE = Path({str(rows)!r})\n{expr}\n")          # the child's record() saves its rows there
    t = time.time()
    try:
        p = subprocess.run([sys.executable, "-c", code], timeout=seconds, cwd=HERE.parent,
                           env=dict(os.environ, **(env or {})))
        status = "ok" if p.returncode == 0 else f"child exited with {p.returncode}"
    except subprocess.TimeoutExpired:
        status = f"killed after {seconds} s"
    done = json.loads(rows.read_text()) if rows.exists() else []
    RESULTS.extend(done)
    save()
    if status != "ok":
        record(section=name, status=status, records_kept=len(done), wall_s=round(time.time() - t, 1))


# the test files whose tensors live on the GPU when there is one (support.DEVICE)
PYTEST_FILES = ("tests/test_linear_jvp.py", "tests/test_mlp_jvp.py", "tests/test_log_zeta.py",
                "tests/test_jvp_epilogue.py", "tests/test_jvp_chain.py", "tests/test_attention_jvp.py")


def section_order(sections: str) -> list:
    """The sections in --sections' order (a lending short of time puts first what it lacks), but
    ceilings first when named (time_log_zeta and sweep_log_zeta read its copy bandwidth; 1 s) and
    pytest last (it gets whatever time is left)."""
    want = sections.split(",")
    return (["ceilings"] * ("ceilings" in want) + [w for w in want if w not in ("ceilings", "pytest")]
            + ["pytest"] * ("pytest" in want))


def pytest_on_gpu(seconds, files=PYTEST_FILES):
    """The kernel test files under pytest on the GPU, one process per file within `seconds` in all (each
    file capped so that 15 s are left for each after it), so a cap costs one file, not the tracebacks
    of all: one record per file (its summary line, failed and erroring tests), and each file's whole
    output beside gpu_results.json (pytest_<name>.txt)."""
    end = time.time() + seconds
    for i, f in enumerate(files):
        left = int(end - time.time()) - 15 * (len(files) - 1 - i)      # 15 s kept for each file after it
        if left < 10:
            record(section="pytest kernels on GPU", file=f, rc="skipped", result="no time left")
            continue
        t = time.time()
        try:
            p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider",
                                f], capture_output=True, text=True, timeout=left, cwd=HERE.parent,
                               env=dict(os.environ, OWF_KERNELS_AUTOTUNE="0", TRITON_INTERPRET="0"))
            rc, out = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            out = [o.decode(errors="replace") if isinstance(o, bytes) else (o or "")    # bytes on some Pythons
                   for o in (e.stdout, e.stderr)]
            rc, out = "timeout", out[0] + out[1]
        if SAVE is not None:
            (SAVE.parent / f"pytest_{Path(f).stem}.txt").write_text(out)
        lines = out.strip().splitlines()
        record(section="pytest kernels on GPU", file=f, rc=rc, wall_s=round(time.time() - t, 1),
               result=(lines or [""])[-1][-200:],
               failed=[ln.split(" ", 1)[1].split(" - ")[0] for ln in lines if ln.startswith(("FAILED ", "ERROR "))])


def saved_records(path):
    """The records of a run: its gpu_results.json, or the records its log printed (one JSON per line)."""
    text = Path(path).read_text()
    if path.endswith(".json"):
        return json.loads(text)
    return [json.loads(line[line.index("] {") + 2:]) for line in text.splitlines()
            if line.startswith("[") and "] {\"section\"" in line]


def table(rows) -> str:
    lines = []
    lj = [r for r in rows if r.get("section") == "linear_jvp fwd+bwd"]
    if lj:
        cols = ["owf", "owf_ieee", "manual", "func.jvp", "compile", "compile-manual", "gemm"]
        lines += ["### linear_jvp forward+backward (tanh, T = 1, M = 4096), median ms", "",
                  "| dtype | K=N | " + " | ".join(c if c != "gemm" else "GEMMs alone" for c in cols) +
                  " | vs func.jvp | vs best compile | owf / GEMMs | owf fwd / plain fwd (ideal 2) | owf rel err |",
                  "|---|---|" + "---|" * (len(cols) + 5)]
        for r in lj:
            f = lambda k: (f"{r[k]:.3f}" if isinstance(r.get(k), float) else  # noqa: E731
                           ("error" if str(r.get(k, "-")).startswith("error") else "-"))
            vs_c = f"{r['speedup_vs_best_compile']:.2f}x" if "speedup_vs_best_compile" in r else "-"
            lines.append(f"| {r['dtype']} | {r['K']} | " + " | ".join(f(c + "_ms") for c in cols) +
                         f" | {r['speedup_vs_func.jvp']:.2f}x | {vs_c} | {r['owf_over_gemm']:.2f} | "
                         f"{r['owf_fwd_ms'] / r['plain_fwd_ms']:.2f} | {r.get('owf_rel_err', '-')} |")
    lz = [r for r in rows if r.get("section") == "log_zeta fwd"]
    if lz:
        lines += ["", "### log_zeta forward", "", "| S | owf ms | torch.logsumexp ms | GB/s | fraction of copy bandwidth |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['S']:.0e} | {r['owf_ms']} | {r['torch_logsumexp_ms']} | {r['GBps']} | {r['frac_of_copy']} |"
                  for r in lz]
    gs = [r for r in rows if r.get("section") == "generator step"]
    if gs:
        lines += ["", "### generator step (forward + log-det + backward), median ms", ""]
        for r in gs:
            lines.append(f"- {r['case']}, B = {r['B']}, width {r['width']}: " +
                         ", ".join(f"{k[:-3]} {v:.3f}" if isinstance(v, float) else f"{k[:-3]} {str(v)[:60]}"
                                   for k, v in r.items() if k.endswith("_ms")))
    dc = [r for r in rows if r.get("section") == "dcgan jvp"]
    if dc:
        lines += ["", "### owf_kernels.jvp, DCGAN one-way flows (B = 64, T = 1), median ms (peak MiB)", "",
                  "| case | dtype | provider | forward+JVP | generator step | training step | owf speedup (step) |",
                  "|---|---|---|---|---|---|---|"]
        for r in dc:
            for prov in DCGAN_ROWS:
                cell = lambda w: (f"{r[f'{prov}_{w}_ms']:.3f} ({r.get(f'{prov}_{w}_peak_MiB', '-')})"  # noqa: E731
                                  if isinstance(r.get(f"{prov}_{w}_ms"), float) else str(r.get(f"{prov}_{w}_ms", "-"))[:40])
                st, ow = r.get(f"{prov}_step_ms"), r.get("owf_step_ms")
                sp = f"{st / ow:.2f}x" if isinstance(st, float) and isinstance(ow, float) else "-"
                lines.append(f"| {r['case']} | {r['dtype']} | {prov} | {cell('fwd')} | {cell('step')} | {cell('train')} | {sp} |")
    nw = [r for r in rows if r.get("section") == "jvp networks"]
    if nw:
        lines += ["", "### owf_kernels.jvp on flow-model networks (jvp_networks.py), median ms (peak MiB)", "",
                  "| case | provider | step | owf speedup | / ideal |", "|---|---|---|---|---|"]
        for r in nw:
            for prov in ["owf", *[k[:-3] for k in r if k.endswith("_ms") and k[:-3] not in ("owf", "ideal")], "ideal"]:
                ms, ow, ideal = r.get(f"{prov}_ms"), r.get("owf_ms"), r.get("ideal_ms")
                ok = all(isinstance(v, float) for v in (ms, ow, ideal))
                lines.append(f"| {r['case']} | {prov} | " + (f"{ms:.3f} ({r.get(f'{prov}_peak_MiB', '-')}) | "
                             f"{ms / ow:.2f}x | {ms / ideal:.2f} |" if ok else f"{str(ms)[:60]} | - | - |"))
    at = [r for r in rows if r.get("section") == "sdpa_jvp"]
    if at:
        lines += ["", "### sdpa_jvp (T = 1), median ms; func.jvp and compile on the math attention", "",
                  "| dtype | B, H, L, E | pass | sdpa_jvp | plain SDPA | func.jvp | compile | func.jvp / sdpa_jvp "
                  "| compile / sdpa_jvp |", "|---|---|---|---|---|---|---|---|---|"]
        for r in at:
            for w in ("fwd", "fwd+bwd"):
                ms = lambda p: (f"{r[f'{p}_{w}_ms']:.3f}" if isinstance(r.get(f"{p}_{w}_ms"), float)  # noqa: E731
                                else "-")
                ratio = lambda p: (f"{r[f'{p}_over_sdpa_jvp_{w}']:.2f}x"  # noqa: E731
                                   if isinstance(r.get(f"{p}_over_sdpa_jvp_{w}"), float) else "-")
                lines.append(f"| {r['dtype']} | {r['B']}, {r['H']}, {r['L']}, {r['E']} | {w} | {ms('sdpa_jvp')} | "
                             f"{ms('plain')} | {ms('func.jvp')} | {ms('compile')} | {ratio('func.jvp')} | "
                             f"{ratio('compile')} |")
    other = [r for r in rows if r.get("section") not in ("linear_jvp fwd+bwd", "log_zeta fwd", "generator step",
                                                         "dcgan jvp", "jvp networks", "sdpa_jvp")]
    lj_err = [f"{r['dtype']} {r['K']} {k}: {v}" for r in lj for k, v in r.items() if str(v).startswith("error")]
    if lj_err:
        lines += ["", "errors: " + "; ".join(lj_err[:4])]
    if other:
        lines += ["", "### checks and notes", ""] + [f"- {json.dumps(r)}" for r in other]
    return "\n".join(lines)


ALL_SECTIONS = ("ceilings,check_linear_jvp,check_log_zeta,check_sdpa_jvp,user,ais,generator,dcgan,networks,"
                "time_sdpa_jvp,time_log_zeta,"
                "time_linear_jvp,sweep_log_zeta,profile,pytest")
# the default run (issue 31): correctness, the user commands, the AIS bracket at large K, the steps;
# the layer and log_zeta timings of 2026-11-28 (docs/benchmarks.md) are rerun only when named
DEFAULT_SECTIONS = ("ceilings,check_linear_jvp,check_log_zeta,check_sdpa_jvp,user,ais,generator,dcgan,networks,"
                    "time_sdpa_jvp,pytest")
CARRY = HERE.parent / "gpu_carry"     # what the GPU machine cannot fetch (no network): see docs/benchmarks.md


def pack(run):
    """--pack RUN: fill gpu_carry/ for a lending: Fashion-MNIST's IDX files, the cached classifier, and
    RUN reduced to what owf.density.load reads (config, step, G, D, event_shape, log_zeta: 15 of 35 MB
    for the default image run; the optimisers and the chains stay behind), as gpu_carry/<RUN's name>."""
    import shutil
    from owf.checkpoint import load_checkpoint, save_atomic
    from owf.classifier import classifier_path
    from owf.images import FASHION_MNIST_FILES, fashion_mnist_dir
    src = fashion_mnist_dir()
    (CARRY / "fashion-mnist").mkdir(parents=True, exist_ok=True)
    for f in FASHION_MNIST_FILES:
        shutil.copyfile(src / (f + ".gz"), CARRY / "fashion-mnist" / (f + ".gz"))
    clf = classifier_path("fashion-mnist")
    if clf.exists():
        (CARRY / "cache").mkdir(exist_ok=True)
        shutil.copyfile(clf, CARRY / "cache" / clf.name)
    state = load_checkpoint(run)
    keep = {k: state[k] for k in ("config", "step", "G", "D", "event_shape", "log_zeta") if k in state}
    (CARRY / Path(run).name).mkdir(exist_ok=True)
    save_atomic(keep, CARRY / Path(run).name / "checkpoint.pt")
    sizes = {str(p.relative_to(CARRY)): round(p.stat().st_size / 2 ** 20, 1) for p in CARRY.rglob("*") if p.is_file()}
    print(json.dumps(sizes, indent=1), f"\n{sum(sizes.values()):.1f} MiB in {CARRY}: with the working tree, under 64")


def rehearse(out):
    """--rehearse: the sections that need no GPU kernels, at toy sizes on the CPU: the user commands
    (owf.train / owf.evaluate as subprocesses) and the AIS rungs, so a lent GPU's minutes are not
    spent on a typo. The CUDA-only sections are exercised by benchmarks/test_gpu_check.py."""
    from owf.images import fashion_mnist_dir
    root = CARRY / "fashion-mnist" if (CARRY / "fashion-mnist").is_dir() else fashion_mnist_dir()
    user_commands(out, root, "cpu", fm_steps=4, ring_steps=20,
                  eval_args=("--zeta-samples", "2", "--ais-steps", "4", "--ais-chains", "4", "--raise-points", "2",
                             "--ais-bases", "defensive", "--no-figures"), caps=(600, 300, 120),
                  train_args=("--fid-every", "0", "--catch-up", "4"))    # the classifier trains for minutes on a CPU
    section("ais", time.time() + 60)(ais_large_k)("/tmp/owf_user_runs/fm", root, 60, "cpu", 4, 2, 8, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=480.0, help="seconds before remaining sections are skipped")
    ap.add_argument("--out", default=os.environ.get("OUT", str(HERE / "results")))
    ap.add_argument("--sizes", default="256,512,1024,4096")
    ap.add_argument("--sections", default=DEFAULT_SECTIONS,
                    help=f"comma-separated sections to run (a rerun names the failed ones), of {ALL_SECTIONS}")
    ap.add_argument("--data-root", default=str(CARRY / "fashion-mnist"), help="Fashion-MNIST's IDX files")
    ap.add_argument("--run", default=str(CARRY / "fm-pcd3-s0"), help="the trained image run of the AIS section")
    ap.add_argument("--ais-seconds", type=float, default=150.0, help="the AIS section's cap")
    ap.add_argument("--ais-chains", type=int, default=4096)
    ap.add_argument("--dry-run", action="store_true", help="print the sections and cases it would run, run nothing")
    ap.add_argument("--pack", metavar="RUN",
                    help="fill gpu_carry/ with the data, the classifier and RUN reduced, then stop")
    ap.add_argument("--rehearse", action="store_true",
                    help="run the user commands and the AIS section at toy sizes on the CPU (a few minutes)")
    ap.add_argument("--table", nargs="+", metavar="LOG",
                    help="print the markdown table of saved records (gpu_results.json, or the log of a killed run)")
    args = ap.parse_args()
    if args.table:
        print(table([r for f in args.table for r in saved_records(f)]))
        return
    bad = set(args.sections.split(",")) - set(ALL_SECTIONS.split(","))
    if bad:
        raise SystemExit(f"--sections: unknown {sorted(bad)}; choose from {ALL_SECTIONS}")
    if args.dry_run:
        import jvp_networks as J
        print(json.dumps({"sections": section_order(args.sections), "budget_s": args.budget, "out": args.out,
                          "data_root": args.data_root, "run": args.run,
                          "dcgan_cases": list(P.DCGAN_CASES), "network_cases": {k: [v[0], v[2], v[3]] for k, v in J.CASES.items()},
                          "network_providers": J.PROVIDERS + J.COMPILED + ["owf-torch-chains", "ideal"]}, indent=1))
        return
    if args.pack:
        return pack(args.pack)
    if args.rehearse:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        rehearse(args.out)
        print("\n" + table(RESULTS))
        bad = [r for r in RESULTS if r.get("rc", 0) != 0 or "status" in r]
        raise SystemExit(1 if bad or not RESULTS else 0)
    global SAVE
    deadline = T0 + args.budget
    Path(args.out).mkdir(parents=True, exist_ok=True)
    SAVE = Path(args.out) / "gpu_results.json"
    props = torch.cuda.get_device_properties(0)
    header = dict(section="device", gpu=props.name, sms=props.multi_processor_count,
                  capability=f"{props.major}.{props.minor}", torch=torch.__version__, triton=triton.__version__,
                  cuda=torch.version.cuda, python=sys.version.split()[0],
                  date=datetime.date.today().isoformat(), allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                  cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    record(**header)
    compile_ok = lambda: time.time() < deadline - 90  # noqa: E731  (compiles are the slow part)

    want = section_order(args.sections)
    steps = dict(
        ceilings=lambda: ceil.update(ceilings() or {}),
        check_linear_jvp=check_linear_jvp,
        check_log_zeta=check_log_zeta,
        # the attention JVP kernel's check and timing (docs/attention_jvp.md), each in a capped child;
        # the check on one fixed tile (OWF_KERNELS_AUTOTUNE=0: one compile per shape, not 15)
        check_sdpa_jvp=lambda: in_child("check sdpa_jvp", "ATT.gpu_check(GC.record)", 120,
                                        {"OWF_KERNELS_AUTOTUNE": "0"}),
        user=lambda: user_commands(
            args.out, args.data_root, "cuda", 300, 2000,
            ("--zeta-samples", "32", "--ais-steps", "1000", "--ais-chains", "128", "--raise-points", "16",
             "--ais-bases", "defensive", "--no-figures")),  # at S = 64, K = 2000, 256 chains, two bases: > 150 s
        ais=lambda: (ais_large_k(args.run, args.data_root, min(args.ais_seconds, max(deadline - time.time() - 60, 0)),
                                 "cuda", args.ais_chains) if Path(args.run).exists()
                     else record(section="ais large K", status=f"skipped: no run at {args.run}")),
        generator=lambda: time_generator_steps(compile_ok),
        dcgan=lambda: time_dcgan(compile_ok),
        networks=lambda: time_networks(compile_ok),
        time_sdpa_jvp=lambda: in_child("time sdpa_jvp",
                                       "ATT.gpu_time(GC.record, GC.bench, lambda: time.time() < T_END - 60)",
                                       max(deadline - time.time() - 60, 1)),
        time_log_zeta=lambda: time_log_zeta(ceil.get("copy_GBps")),
        time_linear_jvp=lambda: time_linear_jvp([int(s) for s in args.sizes.split(",")], compile_ok),
        sweep_log_zeta=lambda: sweep_log_zeta(ceil.get("copy_GBps")),
        profile=profile_owf)
    ceil = {}
    for name in want:
        if name != "pytest":
            section(name, deadline)(steps[name])()
    left = deadline - time.time()
    if left > 40 and "pytest" in want:
        section("pytest on gpu", deadline + 60)(pytest_on_gpu)(int(left + 50))

    md = f"## GPU check: {header['gpu']}, {header['date']} (torch {header['torch']}, triton {header['triton']}, " \
         f"CUDA {header['cuda']})\n\n" + table(RESULTS) + "\n"
    (Path(args.out) / "gpu_table.md").write_text(md)
    print("\n" + md)


if __name__ == "__main__":
    main()

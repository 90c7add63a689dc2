"""owf_kernels.jvp on the networks flow and consistency models run (examples/networks.py): the steps
each benchmark times, built once per case and shared by test_bench_jvp_networks.py, interleaved.py
and gpu_check.py. Every provider computes the same step:

- "meanflow" (MeanFlow, Geng et al. 2025; a DiT or a SongUNet): u, du/dt = JVP of u(z, t, r) along
  (v, 1, 0), the target u_tgt = v - (t - r) sg(du/dt), loss = mean (u - sg(u_tgt))², backward into
  the network: the tangent detached (owf: tangent_grad=False).
- "probes" (free-form flows' Hutchinson probes on a residual MLP): T = 8 tangents v_t, y and J v_t,
  loss = mean y² + Σ_t v_tᵀ J v_t / B, backward through the tangents too.

Providers: "owf" (owf_kernels.jvp, SDPA through attention_jvp.sdpa_jvp); "func.jvp" (torch.func.jvp,
a Python loop over the probes); "func.jvp+vmap" (vmapped over them); "forward_ad" (dual tensors, a
loop); "compile-<p>" (torch.compile of the whole step of provider p; owf's jvp is a graph break there
that runs owf's own program compiled by Inductor as one graph, jvp_compiled, when the tangent is
detached, and eager owf otherwise). The PyTorch providers run a copy of the network whose attention
is written out, softmax(q kᵀ/√d) v: torch 2.14.1 has no forward-mode rule for SDPA on the CPU.

"ideal" (not a provider, the scale the ratios are read against): the primal forward, the tangents'
extra cost and the backward, each timed on the plain network (SDPA included):
  detached tangents: plain forward+backward at B + T plain forwards at B without autograd;
  differentiable tangents: plain forward+backward over the (1+T)·B stacked rows (what the linear
  layers of any JVP must at least do; the nonlinear ops' tangent rules cost more).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import networks as N  # noqa: E402

from owf_kernels import jvp  # noqa: E402

# name -> (kind, network constructor kwargs, B, T)
CASES = {
    "meanflow DiT 32x32x1": ("meanflow", ("DiT", dict(image=(1, 32, 32), patch=2, width=128, depth=4, heads=4,
                                                     zero_init=False)), 32, 1),
    "meanflow SongUNet 32x32x1": ("meanflow", ("SongUNet", dict(image=(1, 32, 32), channels=32, mult=(1, 2), emb=64,
                                                               groups=8, resample="filter", attn="sdpa")), 32, 1),
    "probes ResidualMLP 784": ("probes", ("ResidualMLP", dict(n=784, width=1024, blocks=3)), 128, 8),
}
SMOKE = {
    "meanflow DiT 32x32x1": ("meanflow", ("DiT", dict(image=(1, 8, 8), patch=2, width=16, depth=1, heads=2,
                                                     zero_init=False)), 4, 1),
    "meanflow SongUNet 32x32x1": ("meanflow", ("SongUNet", dict(image=(1, 8, 8), channels=4, emb=16, groups=2)), 4, 1),
    "probes ResidualMLP 784": ("probes", ("ResidualMLP", dict(n=12, width=16, blocks=2)), 8, 8),
}
PROVIDERS = ["owf", "func.jvp", "func.jvp+vmap", "forward_ad"]
COMPILED = [f"compile-{p}" for p in PROVIDERS]


def build(case, table=CASES, device="cpu", seed=0):
    """(kind, net, math_net, B, T): the network (weights seeded) and its copy with attention written out."""
    kind, (cls, kw), B, T = table[case]
    torch.manual_seed(seed)
    net = getattr(N, cls)(**kw).to(device)
    math_net = copy.deepcopy(net)
    for m in math_net.modules():
        if hasattr(m, "attn"):
            m.attn = "math"
    return kind, net, math_net, B, T


def inputs(kind, net, B, T, seed=0):
    """The step's fixed data. meanflow: z = (1 - t) x + t e, v = e - x, r <= t (primals (z, t, r));
    probes: x [B, n] and T probes v_t [T, B, n]."""
    p = next(net.parameters())
    g = torch.Generator(device=p.device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=p.device, dtype=p.dtype)       # noqa: E731
    if kind == "probes":
        return dict(x=r(B, net.inp.in_features), V=r(T, B, net.inp.in_features))
    x, e = r(B, *net.image), r(B, *net.image)
    t = torch.rand(B, generator=g, device=p.device, dtype=p.dtype)
    rr = t * torch.rand(B, generator=g, device=p.device, dtype=p.dtype)
    tb = t.view(-1, *(1,) * len(net.image))
    return dict(z=(1 - tb) * x + tb * e, t=t, r=rr, v=e - x)


def _tangents(d):
    return (d["v"], torch.ones_like(d["t"]), torch.zeros_like(d["r"]))


def jvp_fn(provider, kind, net, math_net, d):
    """A function () -> (y, ẏ [T, ...]) of provider (uncompiled) on the step's data."""
    model = net if provider == "owf" else math_net
    if kind == "meanflow":
        primals, tangents = (d["z"], d["t"], d["r"]), _tangents(d)
        single = [tangents]
    else:
        primals, tangents = (d["x"],), (d["V"],)
        single = [(v,) for v in d["V"]]
    if provider == "owf":
        tg = kind == "probes"
        if kind == "meanflow":
            return lambda: (lambda y, yd: (y, yd[None]))(*jvp(model, primals, tangents, tangent_grad=tg))
        return lambda: jvp(model, primals, tangents, tangent_grad=tg)
    if provider == "func.jvp":
        def run():
            outs = [torch.func.jvp(model, primals, s) for s in single]
            return outs[0][0], torch.stack([o[1] for o in outs])
        return run
    if provider == "func.jvp+vmap":
        stacked = tuple(torch.stack(list(c)) for c in zip(*single))
        return lambda: torch.func.vmap(lambda *s: torch.func.jvp(model, primals, s), out_dims=(None, 0))(*stacked)
    if provider == "forward_ad":
        def run():
            outs = []
            with fwAD.dual_level():
                for s in single:
                    outs.append(fwAD.unpack_dual(model(*[fwAD.make_dual(a, b) for a, b in zip(primals, s)])))
            return outs[0].primal, torch.stack([o.tangent for o in outs])
        return run
    raise ValueError(f"unknown provider {provider!r}")


def loss(kind, d, y, yd):
    """MeanFlow's loss (tangent detached) or the probes' (through the tangents)."""
    if kind == "meanflow":
        dt = (d["t"] - d["r"]).view(-1, *(1,) * (y.dim() - 1))
        target = d["v"] - dt * yd[0].detach()
        return (y - target).square().mean()
    return y.square().mean() + (d["V"] * yd).sum() / y.shape[0]


def step_fn(provider, case, table=CASES, device="cpu"):
    """Zero-argument function: one step (forward with JVP, loss, backward) of provider on case.
    Its attribute `model` is the module it differentiates (for providers.saved_bytes)."""
    kind, net, math_net, B, T = build(case, table, device)
    d = inputs(kind, net, B, T)
    base = provider.removeprefix("compile-")
    f = jvp_fn(base, kind, net, math_net, d)

    def run():
        loss(kind, d, *f()).backward()
    fn = torch.compile(run) if provider.startswith("compile-") else run
    wrapped = lambda: fn()                                       # noqa: E731
    wrapped.model = net if base == "owf" else math_net
    wrapped.forward = f
    return wrapped


def ideal_fns(case, table=CASES, device="cpu", compiled=False):
    """{name: zero-argument function}: the pieces of the ideal (module docstring); `compiled`: each
    piece under torch.compile (the floor the compiled providers are read against)."""
    if compiled:
        return {f"compiled {k}": torch.compile(f) for k, f in ideal_fns(case, table, device).items()}
    kind, net, _, B, T = build(case, table, device)
    d = inputs(kind, net, B, T)
    if kind == "meanflow":
        args = (d["z"], d["t"], d["r"])

        def fwd_bwd():
            net(*args).square().mean().backward()

        def fwd():
            with torch.no_grad():
                return net(*args)                  # returned: compiled, an unused forward would be dead code
        return {"plain fwd+bwd": fwd_bwd, f"plain fwd x{T} (no grad)": (lambda: [fwd() for _ in range(T)])}
    x = torch.cat([d["x"], d["V"].flatten(0, 1)])

    def stacked():
        net(x).square().mean().backward()
    return {"plain fwd+bwd over (1+T)B rows": stacked}


def forward_saved_bytes(provider, case, table=CASES, device="cpu"):
    """Bytes autograd keeps for backward after provider's forward with JVP (providers.saved_bytes)."""
    import providers as P
    fn = step_fn(provider, case, table, device)
    fwd = fn.forward
    fwd()                                                        # traced outside the hooks
    probe = lambda: fwd()                                        # noqa: E731
    probe.model = fn.model
    return P.saved_bytes(probe)

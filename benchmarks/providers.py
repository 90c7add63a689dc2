"""The providers each benchmark compares, built once per size and shared by the pytest-benchmark
suite (CPU) and gpu_check.py (GPU). Every provider computes the same thing:

- linear_jvp: y = act(x Wᵀ + b), y_dot[t] = act'(a) (x_dot[t] Wᵀ), optionally + backward with given
  upstream gradients (gy, gyd) into x, x_dot, W, b.
- generator step: y, log|det J| of an MLP one-way flow, loss = mean(-w·logdet - y.sum(-1)), backward
  into the MLP's parameters. `exact` uses T = n tangents (2D), `jvp1` one tangent (Eq. 9).

Providers: "owf" (owf_kernels.linear_jvp / mlp_jvp: Triton on CUDA, the fused torch path on CPU),
"manual" (F.linear on primal and tangents under autograd, the chain rule by hand; layers and
generator steps), "compile-manual" (its torch.compile), "func.jvp"
(torch.func.jvp of the plain layer / MLP, looped over tangents), "func.jvp+vmap" (vmapped over
tangents), "forward_ad" (dual tensors), "compile" (torch.compile of the func.jvp path), "jacobian"
(torch.autograd.functional.jacobian + slogdet, the paper's 2D method), and "gemm" (the same GEMMs
alone, the floor any provider pays).
"""
from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from owf.model import OneWayFlow, logabsdet
from owf_kernels import linear_jvp

ACT = {"tanh": torch.tanh, "identity": lambda a: a, "leaky_relu": lambda a: F.leaky_relu(a, 0.2),
       "softplus": F.softplus, "silu": F.silu, "relu": torch.relu, "sigmoid": torch.sigmoid}
DACT = {"tanh": lambda a, y: 1 - y * y, "identity": lambda a, y: torch.ones_like(a),
        "leaky_relu": lambda a, y: torch.where(a > 0, 1.0, 0.2), "relu": lambda a, y: (a > 0).to(a.dtype),
        "softplus": lambda a, y: torch.sigmoid(a), "sigmoid": lambda a, y: y * (1 - y),
        "silu": lambda a, y: torch.sigmoid(a) * (1 + a * (1 - torch.sigmoid(a)))}


# ---------------------------------------------------------------------------------------------
# One layer
# ---------------------------------------------------------------------------------------------
def layer_inputs(M, K, N, T, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(dtype)  # noqa: E731
    t = dict(x=r(M, K), xd=r(T, M, K), W=r(N, K) / math.sqrt(K), b=r(N), gy=r(M, N), gyd=r(T, M, N))
    for k in ("x", "xd", "W", "b"):
        t[k].requires_grad_(True)
    return t


def layer_flops(M, K, N, T, backward=False):
    """2·(1+T)·M·K·N per GEMM pass; backward adds two (gx and gW)."""
    return 2 * (1 + T) * M * K * N * (3 if backward else 1)


def _plain(t, act):
    return ACT[act](F.linear(t["x"], t["W"], t["b"]))


def layer_fn(provider, t, act="tanh"):
    """A zero-argument function computing (y, y_dot) with `provider`."""
    T = t["xd"].shape[0]
    f = lambda x: ACT[act](F.linear(x, t["W"], t["b"]))  # noqa: E731
    if provider == "owf":
        return lambda: linear_jvp(t["x"], t["xd"], t["W"], t["b"], act)
    if provider == "plain":
        return lambda: (_plain(t, act), None)
    if provider == "func.jvp":
        def run():
            outs = [torch.func.jvp(f, (t["x"],), (t["xd"][i],)) for i in range(T)]
            return outs[0][0], torch.stack([o[1] for o in outs])
        return run
    if provider == "func.jvp+vmap":
        return lambda: torch.func.vmap(lambda v: torch.func.jvp(f, (t["x"],), (v,)), out_dims=(None, 0))(t["xd"])
    if provider == "forward_ad":
        def run():
            with fwAD.dual_level():
                outs = [fwAD.unpack_dual(f(fwAD.make_dual(t["x"], t["xd"][i]))) for i in range(T)]
            return outs[0].primal, torch.stack([o.tangent for o in outs])
        return run
    if provider == "manual":     # the chain rule by hand: F.linear on primal and tangents under autograd
        return lambda: _manual_layer(t["x"], t["xd"], t["W"], t["b"], act)
    if provider == "compile":
        return torch.compile(layer_fn("func.jvp", t, act), dynamic=False)
    if provider == "compile-manual":
        fn = torch.compile(_manual_layer, dynamic=False)
        return lambda: fn(t["x"], t["xd"], t["W"], t["b"], act)
    raise ValueError(f"unknown provider {provider!r}")


def _manual_layer(x, xd, W, b, act):
    a = F.linear(x, W, b)
    y = ACT[act](a)
    return y, DACT[act](a, y) * F.linear(xd, W)        # y_dot = σ'(a) (x_dot Wᵀ)


def with_backward(fn, t):
    """fn's forward, then backward of the given upstream gradients into x, x_dot, W, b."""
    def run():
        y, yd = fn()
        outs, grads = [y], [t["gy"]]
        if yd is not None:
            outs.append(yd)
            grads.append(t["gyd"])
        torch.autograd.backward(outs, grads)
    return run


def gemm_fn(t, backward=False):
    """The GEMMs alone on pre-stacked operands: [x; x_dot] Wᵀ, then (backward) GA W and GAᵀ [x; x_dot]."""
    T, M, K = t["xd"].shape
    N = t["W"].shape[0]
    h = torch.cat([t["x"].detach()[None], t["xd"].detach()]).reshape((1 + T) * M, K)
    W = t["W"].detach()
    ga = torch.cat([t["gy"][None], t["gyd"]]).reshape((1 + T) * M, N)

    def run():
        out = h @ W.t()
        if backward:
            ga @ W
            ga.t() @ h
        return out
    return run


# ---------------------------------------------------------------------------------------------
# A generator step: an MLP one-way flow, its log-det, a loss, backward
# ---------------------------------------------------------------------------------------------
def generator(n, width, depth=2, device="cpu", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return OneWayFlow(n, hidden=(width,) * depth, activation="tanh").to(device=device, dtype=dtype)


def _mlp(G, u):
    return G.g_n(u)


def generator_step_fn(provider, G, B, method="exact", w=0.1, seed=0):
    """Zero-argument function: sample u (fixed), y and log|det J|, loss, backward into G."""
    dev, dt = G.layers[0].weight.device, G.layers[0].weight.dtype
    g = torch.Generator(device=dev).manual_seed(seed)
    n = G.n
    u = torch.randn(B, n, generator=g, device=dev, dtype=dt)
    v = torch.randn(B, n, generator=g, device=dev, dtype=dt)
    v = v / v.norm(dim=1, keepdim=True)
    tangents = torch.eye(n, device=dev, dtype=dt).unsqueeze(1).expand(n, B, n) if method == "exact" else v[None]
    params = list(G.parameters())

    def loss_of(y, yd):
        ld = logabsdet(yd) if method == "exact" else torch.log(yd.squeeze(0).norm(dim=-1))
        return (-w * ld - y.sum(-1)).mean()

    def finish(y, yd):
        return torch.autograd.grad(loss_of(y, yd), params)

    if provider == "owf":
        return lambda: finish(*G.g_n_jvp(u, tangents))
    f = lambda x: _mlp(G, x)  # noqa: E731
    if provider == "func.jvp":
        def run():
            outs = [torch.func.jvp(f, (u,), (tangents[i],)) for i in range(tangents.shape[0])]
            return finish(outs[0][0], torch.stack([o[1] for o in outs]))
        return run
    if provider == "func.jvp+vmap":
        def run():
            y, yd = torch.func.vmap(lambda t: torch.func.jvp(f, (u,), (t,)), out_dims=(None, 0))(tangents)
            return finish(y, yd)
        return run
    if provider == "forward_ad":
        def run():
            with fwAD.dual_level():
                outs = [fwAD.unpack_dual(f(fwAD.make_dual(u, tangents[i]))) for i in range(tangents.shape[0])]
            return finish(outs[0].primal, torch.stack([o.tangent for o in outs]))
        return run
    if provider == "jacobian":       # the paper's 2D method: full per-sample Jacobians, then slogdet
        if method != "exact":
            raise ValueError("jacobian computes the exact log-det only")

        def run():
            y = f(u)
            J = torch.autograd.functional.jacobian(lambda x: f(x).sum(0), u, create_graph=True)   # [n, B, n]
            return finish(y, J.permute(2, 1, 0))
        return run
    if provider == "compile":
        inner = generator_step_fn("func.jvp", G, B, method, w, seed)
        return torch.compile(inner, dynamic=False)
    if provider == "manual":
        return lambda: finish(*_manual_mlp_jvp(G, u, tangents))
    if provider == "compile-manual":      # inductor fuses the elementwise work of forward and backward
        loss = torch.compile(lambda u, t: loss_of(*_manual_mlp_jvp(G, u, t)), dynamic=False)
        return lambda: torch.autograd.grad(loss(u, tangents), params)
    raise ValueError(f"unknown provider {provider!r}")


def _manual_mlp_jvp(G, u, tangents):
    """The chain rule by hand through G's MLP under autograd: F.linear on primal and tangents, then
    y = σ(a), y_dot = σ'(a) ⊙ a_dot per layer (what "compile-manual" hands to torch.compile)."""
    h, hd = u, tangents
    *hidden, last = G.layers
    for layer in hidden:
        h, hd = _manual_layer(h, hd, layer.weight, layer.bias, G.activation)
    return F.linear(h, last.weight, last.bias), F.linear(hd, last.weight)


def generator_gemm_fn(G, B, method="exact"):
    """The generator step's GEMMs alone: per layer one forward and two backward GEMMs on
    (1+T)·B rows (the first layer's input gradient is not needed)."""
    dev, dt = G.layers[0].weight.device, G.layers[0].weight.dtype
    T = G.n if method == "exact" else 1
    mats = []
    for i, layer in enumerate(G.layers):
        N, K = layer.weight.shape
        h = torch.randn((1 + T) * B, K, device=dev, dtype=dt)
        ga = torch.randn((1 + T) * B, N, device=dev, dtype=dt)
        mats.append((h, layer.weight.detach(), ga, i > 0))

    def run():
        for h, W, ga, need_gx in mats:
            h @ W.t()
            ga.t() @ h
            if need_gx:
                ga @ W
    return run


# ---------------------------------------------------------------------------------------------
# DCGAN one-way flows (owf_kernels.jvp over whole networks): forward+JVP, and a generator step
# ---------------------------------------------------------------------------------------------
# name -> (image shape, generator widths, energy widths)
DCGAN_CASES = {"28x28x1": ((1, 28, 28), (96, 48), (48, 96)), "32x32x3": ((3, 32, 32), (128, 64), (64, 128))}
DCGAN_SMOKE = {"28x28x1": ((1, 8, 8), (16, 4), (4, 8)), "32x32x3": ((3, 8, 8), (48, 12), (4, 8))}
DCGAN_PROVIDERS = ["owf", "owf-batch", "func.jvp", "forward_ad", "compile", "plain"]


def dcgan(shape, g_widths, d_widths, device="cpu", dtype=torch.float32, seed=0):
    """(G, D): a DCGANFlow (train-mode BatchNorm) and a ConvEnergy."""
    from owf.dcgan import ConvEnergy, DCGANFlow
    torch.manual_seed(seed)
    n = shape[0] * shape[1] * shape[2]
    return (DCGANFlow(shape, g_widths, latent=min(100, n)).to(device=device, dtype=dtype),
            ConvEnergy(shape, d_widths).to(device=device, dtype=dtype))


def _func_jvp_copy(G):
    """G for torch.func.jvp: a copy whose BatchNorms use batch statistics and keep no running ones
    (torch.func.replace_all_batch_norm_modules_; torch.func.jvp refuses the in-place running-stats
    update of a train-mode BatchNorm). Its tangents then flow through the batch statistics: the
    math of owf's batch_norm="batch" and of forward_ad's dual tensors."""
    import copy
    H = copy.deepcopy(G)
    torch.func.replace_all_batch_norm_modules_(H)
    return H


def dcgan_tangents(provider, G):
    """(model, g_n_jvp): the module whose parameters `provider` differentiates (func.jvp's: a copy,
    see _func_jvp_copy) and its network with one tangent, (u [B, n], u_dot [1, B, n]) -> (y,
    y_dot [1, B, *event_shape]), as OneWayFlowBase.g_n_jvp; "plain" gives (y, None). "compile" is
    func.jvp's, for the caller to torch.compile with its inputs (compiled with u and u_dot as
    arguments, a no_grad call trips torch 2.14.1's InferenceMode assert; over a closure it runs)."""
    net, model = G.net, G
    if provider == "owf":
        f = G.g_n_jvp                                    # owf_kernels.jvp, per-sample BatchNorm: what owf trains with
    elif provider == "owf-batch":
        from owf_kernels import jvp
        f = lambda u, ud: jvp(net, (u,), (ud,), batch_norm="batch")     # noqa: E731
    elif provider == "plain":
        f = lambda u, ud: (net(u), None)                 # noqa: E731
    elif provider == "forward_ad":
        def f(u, ud):
            with fwAD.dual_level():
                y, yd = fwAD.unpack_dual(net(fwAD.make_dual(u, ud[0])))
            return y, yd[None]
    elif provider in ("func.jvp", "compile"):
        model = _func_jvp_copy(G)
        f = lambda u, ud: (lambda y, yd: (y, yd[None]))(*torch.func.jvp(model.net, (u,), (ud[0],)))   # noqa: E731
    else:
        raise ValueError(f"unknown provider {provider!r}")
    return model, f


def dcgan_jvp_fn(provider, G, u, v):
    """Zero-argument function: (y, y_dot) of G's network at u with one tangent v (T = 1). Its
    attribute `model` is the module whose parameters it differentiates (func.jvp's: a copy)."""
    model, f = dcgan_tangents(provider, G)
    fn = lambda: f(u, v[None])                           # noqa: E731
    fn = torch.compile(fn, dynamic=False) if provider == "compile" else fn
    wrapped = lambda: fn()                               # noqa: E731
    wrapped.model = model
    return wrapped


def dcgan_inputs(G, B, seed=0):
    p = next(G.parameters())
    g = torch.Generator(device=p.device).manual_seed(seed)
    u = torch.randn(B, G.n, generator=g, device=p.device, dtype=p.dtype)
    v = torch.randn(B, G.n, generator=g, device=p.device, dtype=p.dtype)
    return u, v / v.norm(dim=1, keepdim=True)


def dcgan_step_fn(provider, G, D, B, w=0.1, seed=0):
    """Zero-argument function: y and y_dot (T = 1) of G at fixed u, v, the generator loss of Eq. 17
    with Eq. 9, mean(-w log‖Jv‖ - D(y)), and its backward into G's parameters."""
    u, v = dcgan_inputs(G, B, seed)
    fn = dcgan_jvp_fn(provider, G, u, v)

    def run():
        y, yd = fn()
        if yd is None:                                 # "plain": the forward and D only, for scale
            (-D(y)).mean().backward()
            return
        (-w * torch.log(yd.squeeze(0).flatten(1).norm(dim=-1)) - D(y)).mean().backward()
    return run


def saved_bytes(fn) -> int:
    """Bytes autograd saves for backward while fn() runs its forward, beyond the parameters (a CPU
    stand-in for peak memory: on the GPU, torch.cuda.max_memory_allocated). Tensors sharing storage
    are counted once; a functorch wrapper (torch.func.jvp) by the storage it wraps. A parameter
    saved by reference (fn.model's, when fn has one) costs no memory and is not counted: owf's
    first Linear saves its weight, func.jvp's does not, which is 14 MiB at 28×28 and 96 MiB at 32×32."""
    params = {p.untyped_storage().data_ptr() for p in fn.model.parameters()} if hasattr(fn, "model") else set()
    seen = {}

    def pack(t):
        u = t
        while torch._C._functorch.is_functorch_wrapped_tensor(u):
            u = torch._C._functorch.get_unwrapped(u)
        try:
            key, nbytes = u.untyped_storage().data_ptr(), u.untyped_storage().nbytes()
        except RuntimeError:                 # no storage even unwrapped: counted by its size
            key, nbytes = id(t), t.numel() * t.element_size()
        if key not in params:
            seen[key] = nbytes
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


# The DCGAN one-way flow's training step as the benchmarks measured it from 12-01: the image defaults until
# 12-06 (a Gaussian base under D, G the tanh network), not today's copula recipe (owf.config.KIND_DEFAULTS).
IMAGE_DEFAULTS_UNTIL_1206 = dict(d_base="gaussian", d_quadratic=0, mcmc_weight=0.2)


class _FixedImages:
    """A task whose batch(n, ...) is the same n images: the training step without a data loader."""

    def __init__(self, x):
        self.x = x

    def batch(self, n, generator, device):
        return self.x[:n]


def dcgan_train_step_fn(provider, G, D, B, seed=0):
    """Zero-argument function: one step of owf.train.train_step, as `python -m owf.train` runs it for
    images (Eq. 16 for D, then Eq. 17 with Eq. 9's log‖Jv‖ for G, fused Adam, the image defaults of
    owf.config until 12-06, before G started at the copula base), on copies of G and D, with
    `provider`'s tangents in place of G's own g_n_jvp and a fixed batch of B random images. "plain": a tangent that costs nothing (y_dot constant, so
    log‖Jv‖ too), the floor that no provider's step can go below."""
    import copy
    from owf.config import Config
    from owf.train import train_step
    model, f = dcgan_tangents(provider, copy.deepcopy(G))
    if provider == "compile":
        f = torch.compile(f, dynamic=False)
    elif provider == "plain":
        f = lambda u, ud: (lambda y: (y, torch.ones_like(y).unsqueeze(0)))(model.g_n(u))   # noqa: E731
    model.g_n_jvp = f                                    # what G.logdet calls for Eq. 9
    D = copy.deepcopy(D)
    p = next(model.parameters())
    cfg = Config(data="fashion-mnist", batch=B, samples=B, **IMAGE_DEFAULTS_UNTIL_1206)   # train_step reads them
    opt_g = torch.optim.Adam(model.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), fused=True)
    gen = torch.Generator(device=p.device).manual_seed(seed)
    task = _FixedImages(torch.rand(B, *model.event_shape, generator=gen, device=p.device, dtype=p.dtype) * 2 - 1)
    params = list(model.parameters())
    return lambda: train_step(cfg, task, model, D, opt_g, opt_d, gen, params, p.device)


def dcgan_exact_logdet_fn(G, B=4, chunk=112, seed=0):
    """log|det J| of B samples with all n tangents, `chunk` at a time (eval-mode BatchNorm, no
    autograd): against n + 1 plain forwards of B samples (`dcgan_plain_forwards_fn`)."""
    u, _ = dcgan_inputs(G, B, seed)

    def run():
        with torch.no_grad():
            return G.logdet(u, "exact", chunk=chunk)[1]
    return run


def dcgan_plain_forwards_fn(G, B=4, seed=0):
    """n + 1 plain forwards of B samples, batched as one forward of (n + 1)·B."""
    u, _ = dcgan_inputs(G, B, seed)
    big = u.repeat(G.n + 1, 1)

    def run():
        with torch.no_grad():
            return G.net(big)
    return run

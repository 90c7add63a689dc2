"""owf_kernels.jvp on the networks flow and consistency models run (examples/networks.py), against
torch.func.jvp in float64 with every gradient: a small SongUNet, a DiT with adaLN-Zero and two time
inputs (MeanFlow's call, labels closed over), a residual MLP with T = 8 probes (tangent detached
and differentiable), a module with two outputs and aux. The oracle is the same network with its
attention written as softmax(q kᵀ/√d) v (torch has no forward-mode rule for SDPA on the CPU) and
its LayerNorms written out (torch.func.jvp gets their tangents' gradients wrong: test_jvp_rules.py).
Then the engine's contract: one trace per signature, what retraces, what is refused, memory.
"""
import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from owf_kernels import jvp
from support import triton_usable
from test_jvp_rules import TwinLayerNorm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import networks as N  # noqa: E402

DT = torch.float64


def oracle(net: nn.Module) -> nn.Module:
    """A copy with math attention and written-out LayerNorms (the module docstring)."""
    ref = copy.deepcopy(net)
    norms = [(m, name, child) for m in ref.modules() for name, child in m.named_children() if isinstance(child, nn.LayerNorm)]
    for m in ref.modules():
        if hasattr(m, "attn"):
            m.attn = "math"
    for m, name, child in norms:
        setattr(m, name, TwinLayerNorm(child))
    return ref


def loss(y, yd):
    """Linear in y with a weight that is not constant, quadratic in the tangents."""
    c = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)
    return (c * y).sum() + 0.5 * yd.square().sum()


def compare(net, primals, tangents, atol=1e-9):
    """Values, tangents and every gradient (primals and parameters) against the oracle, with
    tangent_grad; without it, the tangents and the plain forward's gradients."""
    ref = oracle(net)
    primals = [p.detach().clone().requires_grad_(p.is_floating_point()) for p in primals]
    T = tangents[0].shape[0]
    y, yd = jvp(net, tuple(primals), tuple(tangents))
    outs = [torch.func.jvp(ref, tuple(primals), tuple(v[t] for v in tangents)) for t in range(T)]
    ry, ryd = outs[0][0], torch.stack([o[1] for o in outs])
    torch.testing.assert_close(y, ry, atol=atol, rtol=1e-8)
    torch.testing.assert_close(yd, ryd, atol=atol, rtol=1e-8)
    leaves = primals + list(net.parameters())
    got = torch.autograd.grad(loss(y, yd), leaves, allow_unused=True)
    want = torch.autograd.grad(loss(ry, ryd), primals + list(ref.parameters()), allow_unused=True)
    names = [f"primal {i}" for i in range(len(primals))] + [n for n, _ in net.named_parameters()]
    for g, w, name in zip(got, want, names):
        if w is None:
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, w, atol=1e-7, rtol=1e-6, msg=name)
    y2, yd2 = jvp(net, tuple(primals), tuple(tangents), tangent_grad=False)
    assert not yd2.requires_grad
    torch.testing.assert_close(yd2, ryd, atol=atol, rtol=1e-8)
    c = torch.linspace(-1, 1, y2.numel(), dtype=DT).view(y2.shape)
    got = torch.autograd.grad((c * y2).sum(), leaves, allow_unused=True)
    want = torch.autograd.grad((c * net(*primals)).sum(), leaves, allow_unused=True)
    for g, w, name in zip(got, want, names):
        if w is not None:
            torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-8, msg=name)


def meanflow_inputs(B, shape, T):
    """(z, t, r) and MeanFlow's tangents (v, 1, 0), T of them (v differs, dt/dt = 1, dr/dt = 0)."""
    z, t = torch.randn(B, *shape, dtype=DT), torch.rand(B, dtype=DT)
    r = t * torch.rand(B, dtype=DT)
    return [z, t, r], [torch.randn(T, B, *shape, dtype=DT), torch.ones(T, B, dtype=DT), torch.zeros(T, B, dtype=DT)]


# ---------------------------------------------------------------------------------------------
# the networks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resample", ["filter", "interp", "bilinear"])
def test_song_unet(resample):
    """GroupNorm, SiLU, the time embedding, x.add_ residuals, skip concatenation, attention, down and
    up sampling (grouped convolutions, average pooling and nearest/bilinear upsampling)."""
    torch.manual_seed(0)
    net = N.SongUNet(image=(2, 8, 8), channels=4, emb=16, groups=2, resample=resample, attn="sdpa").double()
    compare(net, *meanflow_inputs(3, (2, 8, 8), 2))


@pytest.mark.parametrize("T", [1, 3])
def test_dit_with_adaln_zero_two_time_inputs_and_labels(T):
    """MeanFlow's call, u(z, t, r) with labels closed over, on a DiT (adaLN-Zero's chunk(6), qk-RMSNorm,
    SDPA, LayerNorm without affine, GELU(tanh), unpatchify by einsum); weights not zero-initialised,
    so that every path counts."""
    torch.manual_seed(0)
    net = N.DiT(image=(1, 8, 8), patch=2, width=16, depth=2, heads=2, num_classes=3, zero_init=False).double()
    labels = torch.tensor([2, 0, 1])
    primals, tangents = meanflow_inputs(3, (1, 8, 8), T)
    u = lambda z, t, r: net(z, t, r, labels)                        # noqa: E731
    ref = oracle(net)
    ps = [p.clone().requires_grad_() for p in primals]
    y, yd = jvp(u, tuple(ps), tuple(tangents))
    outs = [torch.func.jvp(lambda z, t, r: ref(z, t, r, labels), tuple(ps), tuple(v[i] for v in tangents))
            for i in range(T)]
    torch.testing.assert_close(y, outs[0][0], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(yd, torch.stack([o[1] for o in outs]), atol=1e-10, rtol=1e-8)
    got = torch.autograd.grad(loss(y, yd), ps + list(net.parameters()))
    want = torch.autograd.grad(loss(outs[0][0], torch.stack([o[1] for o in outs])), ps + list(ref.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-8, rtol=1e-6)
    if T == 1:
        compare(net, primals, tangents)                           # the module itself, without labels


@pytest.mark.parametrize("tangent_grad", [True, False])
def test_residual_mlp_with_eight_probes(tangent_grad):
    """Free-form flows' Hutchinson probes: T = 8 tangents in one pass, the loss through the tangents
    (differentiable) or with the tangent detached."""
    torch.manual_seed(0)
    net = N.ResidualMLP(n=6, width=16, blocks=2).double()
    x = torch.randn(5, 6, dtype=DT, requires_grad=True)
    V = torch.randn(8, 5, 6, dtype=DT)
    y, yd = jvp(net, (x,), (V,), tangent_grad=tangent_grad)
    outs = [torch.func.jvp(net, (x,), (v,)) for v in V]
    ry, ryd = outs[0][0], torch.stack([o[1] for o in outs])
    torch.testing.assert_close(yd, ryd)
    surrogate = lambda y, yd: y.square().sum() + (V * (yd if tangent_grad else yd.detach())).sum()   # noqa: E731
    got = torch.autograd.grad(surrogate(y, yd), [x] + list(net.parameters()))
    want = torch.autograd.grad(surrogate(ry, ryd), [x] + list(net.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_two_outputs_and_aux():
    """has_aux as in torch.func.jvp: (outputs, their tangents, aux); the outputs a tuple."""
    torch.manual_seed(0)
    net = N.TwoHeads().double()
    x, s = torch.randn(4, 6, dtype=DT, requires_grad=True), torch.rand(4, dtype=DT) + 0.5
    v, w = torch.randn(4, 6, dtype=DT), torch.randn(4, dtype=DT)
    (a, b), (da, db), aux = jvp(net, (x, s), (v, w), has_aux=True)
    (ra, rb), (rda, rdb), raux = torch.func.jvp(net, (x, s), (v, w), has_aux=True)
    for got, want in ((a, ra), (b, rb), (da, rda), (db, rdb), (aux["feature_norm"], raux["feature_norm"])):
        torch.testing.assert_close(got, want)
    g = torch.autograd.grad(loss(a, da) + loss(b, db) + aux["feature_norm"], [x] + list(net.parameters()))
    r = torch.autograd.grad(loss(ra, rda) + loss(rb, rdb) + raux["feature_norm"], [x] + list(net.parameters()))
    for p, q in zip(g, r):
        torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="has_aux=True expects func to return a pair"):
        jvp(lambda x: x * 2, (x,), (v,), has_aux=True)


def test_an_output_that_does_not_depend_on_the_primals_has_zero_tangents():
    c = torch.randn(3, dtype=DT)
    (y, k), (yd, kd) = jvp(lambda x: (x.sin(), c * 2), (torch.randn(3, dtype=DT),), (torch.randn(2, 3, dtype=DT),))
    torch.testing.assert_close(k, c * 2)
    assert kd.shape == (2, 3) and not kd.any()


@pytest.mark.skipif(not triton_usable(), reason="triton is not installed")
def test_a_dit_on_the_triton_backend(monkeypatch):
    """Every Triton path a DiT meets (mlp_jvp's linear_jvp kernels, the flash-attention JVP) in the
    interpreter: the torch backend's values and gradients to float32 accuracy."""
    torch.manual_seed(0)
    net = N.DiT(image=(1, 4, 8), patch=2, width=16, depth=1, heads=1, zero_init=False)
    primals, tangents = (lambda p, t: ([x.float() for x in p], [v.float() for v in t]))(*meanflow_inputs(2, (1, 4, 8), 1))
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("OWF_KERNELS_BACKEND", backend)
        ps = [p.clone().requires_grad_() for p in primals]
        y, yd = jvp(net, tuple(ps), tuple(tangents))
        results[backend] = (y, yd, torch.autograd.grad(loss(y, yd), list(net.parameters())))
    for a, b in zip(results["triton"][:2], results["torch"][:2]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    for a, b in zip(results["triton"][2], results["torch"][2]):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# the trace: once per signature
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def traces(monkeypatch):
    """A list that gains an entry each time jvp traces."""
    import owf_kernels.jvp_trace as JT
    made, real = [], JT._trace
    monkeypatch.setattr(JT, "_trace", lambda *a, **k: made.append(1) or real(*a, **k))
    return made


def test_a_new_closure_each_step_traces_once_and_reads_its_own_labels(traces):
    """MeanFlow builds `lambda z, t, r: net(z, t, r, labels)` inside each step: one trace serves
    them all, the labels are inputs (not baked in), and an in-place parameter update is seen."""
    torch.manual_seed(0)
    net = N.DiT(image=(1, 4, 4), patch=2, width=8, depth=1, heads=1, num_classes=4, zero_init=False).double()
    primals, tangents = meanflow_inputs(3, (1, 4, 4), 1)
    for step in range(3):
        labels = torch.randint(0, 4, (3,))
        got = jvp(lambda z, t, r: net(z, t, r, labels), tuple(primals), tuple(tangents))
        want = torch.func.jvp(lambda z, t, r: oracle(net)(z, t, r, labels), tuple(primals), tuple(v[0] for v in tangents))
        torch.testing.assert_close(got[1][0], want[1])
        with torch.no_grad():
            net.y_embed.weight.add_(1.0)                          # an optimizer step, in place
    assert len(traces) == 1


def test_what_retraces(traces):
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh()).double()
    x, v = torch.randn(5, 3, dtype=DT), torch.randn(5, 3, dtype=DT)
    jvp(net, (x,), (v,))
    jvp(net, (x + 1,), (v * 2,))                                  # same signature: no trace
    jvp(net, (x,), (v[None].expand(3, 5, 3),))                    # another T: no trace either
    assert len(traces) == 1
    jvp(net, (x[:4],), (v[:4],))                                  # a shape
    net.eval()
    jvp(net, (x,), (v,))                                          # the training mode
    jvp(copy.deepcopy(net), (x,), (v,))                           # another module
    assert len(traces) == 4


def test_a_data_dependent_branch_is_refused_in_one_line():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else -x
    with pytest.raises(ValueError, match=r"Branchy branches on a tensor's value .*torch.where") as e:
        jvp(Branchy(), (torch.randn(3),), (torch.randn(3),))
    assert "\n" not in str(e.value)


def test_a_tensor_it_cannot_lift_is_named():
    held = [torch.randn(3)]
    with pytest.raises(ValueError, match="reads a tensor that is neither a primal"):
        jvp(lambda x: x * held[0], (torch.randn(3),), (torch.randn(3),))


def test_momentum_none_batch_norm_is_a_cumulative_average_over_calls():
    """nn.BatchNorm(momentum=None) reads num_batches_tracked in Python: traced once, its factor is
    1/n at each call, as the module's own."""
    bn, own = nn.BatchNorm1d(3, momentum=None).double(), nn.BatchNorm1d(3, momentum=None).double()
    for _ in range(3):
        x = torch.randn(6, 3, dtype=DT) * 2 + 1
        jvp(bn, (x,), (torch.randn(6, 3, dtype=DT),))
        own(x)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(own, name))


def test_without_tangent_grad_backward_keeps_what_the_plain_forward_keeps():
    """tangent_grad=False runs the primal once, with its own graph: the bytes autograd saves are the
    plain forward's, and the tangents hold none (a DiT, MeanFlow's case)."""
    torch.manual_seed(0)
    net = N.DiT(image=(1, 8, 8), patch=2, width=16, depth=2, heads=2, zero_init=False)
    primals, tangents = meanflow_inputs(4, (1, 8, 8), 1)
    primals, tangents = [p.float() for p in primals], [t.float() for t in tangents]

    def saved(fn):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
        return sum(seen.values()), out
    jvp(net, tuple(primals), tuple(tangents), tangent_grad=False)        # traced outside the hooks
    jvp(net, tuple(primals), tuple(tangents))
    plain, _ = saved(lambda: net(*primals))
    owf, (y, yd) = saved(lambda: jvp(net, tuple(primals), tuple(tangents), tangent_grad=False))
    full, _ = saved(lambda: jvp(net, tuple(primals), tuple(tangents)))
    assert owf == plain < full
    assert yd.grad_fn is None


def test_under_torch_compile_jvp_is_a_graph_break_in_both_modes():
    """torch.compile of a MeanFlow step (tangent detached, and not): no network op reaches the
    caller's compiled graph (the caller's Dynamo never traces owf's runner: with it tracing, a graph
    break inside the runner dropped a convolution's weight gradient, docs/jvp.md), and every parameter
    gets eager owf's gradient, from a cold and a warm trace cache. Without tangent_grad jvp runs its
    own program compiled (jvp_compiled, fullgraph); with it, eagerly."""
    import owf_kernels.jvp_trace as JT
    torch.manual_seed(0)
    net = N.DiT(image=(1, 8, 8), patch=2, width=16, depth=1, heads=2, zero_init=False)
    primals, tangents = meanflow_inputs(4, (1, 8, 8), 1)
    primals, tangents = tuple(p.float() for p in primals), tuple(t[0].float() for t in tangents)

    def step(tangent_grad, compile=None):
        y, yd = jvp(net, primals, tangents, tangent_grad=tangent_grad, compile=compile)
        dt = (primals[1] - primals[2]).view(-1, 1, 1, 1)
        return (y - (tangents[0] - dt * yd.detach())).square().mean()

    for tangent_grad in (False, True):
        for warm in (False, True):
            JT.clear_cache()
            if warm:
                step(tangent_grad)
            graphs = []

            def backend(gm, example_inputs):
                graphs.append(gm)
                return gm.forward
            torch._dynamo.reset()
            got = torch.compile(step, backend=backend)(tangent_grad)
            ops = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
            assert not any("conv" in o or "linear" in o or "flash" in o for o in ops), ops
            (trace,) = [entry[1] for entry in JT._CACHE.values()]
            assert [callable(f) for f in trace.compiled.values()] == ([] if tangent_grad else [True])
            g_got = torch.autograd.grad(got, list(net.parameters()))
            g_want = torch.autograd.grad(step(tangent_grad, compile=False), list(net.parameters()))
            for a, b in zip(g_got, g_want):
                torch.testing.assert_close(a, b)


def test_compile_true_is_eager_owf_compiled():
    """jvp(..., tangent_grad=False, compile=True) outside torch.compile: outputs, tangents and every
    gradient as eager owf's (float32 rounding: Inductor fuses and reorders); the second call reuses the
    compiled program; a BatchNorm's running statistics update once, as eagerly; compile=True with
    tangent_grad is refused, naming why."""
    import owf_kernels.jvp_trace as JT
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 36, 5))
    twin = copy.deepcopy(net)
    x, v = torch.randn(3, 1, 6, 6), torch.randn(3, 1, 6, 6)
    JT.clear_cache()
    torch._dynamo.reset()
    for call in range(2):
        y, yd = jvp(net, (x,), (v,), tangent_grad=False, compile=True)
        y0, yd0 = jvp(twin, (x,), (v,), tangent_grad=False, compile=False)
        torch.testing.assert_close(y, y0)
        torch.testing.assert_close(yd, yd0)
        assert yd.grad_fn is None
        g = torch.autograd.grad((y * yd).sum(), list(net.parameters()))
        g0 = torch.autograd.grad((y0 * yd0).sum(), list(twin.parameters()))
        for a, b in zip(g, g0):
            torch.testing.assert_close(a, b)
        for a, b in zip(net.buffers(), twin.buffers()):
            torch.testing.assert_close(a, b)
    compiled = [f for e in JT._CACHE.values() for f in e[1].compiled.values()]
    assert len(compiled) == 1 and callable(compiled[0])
    with pytest.raises(ValueError, match="compile=True. needs tangent_grad=False.*wrong convolution-weight"):
        jvp(net, (x,), (v,), compile=True)


def test_compile_true_runs_eagerly_where_dynamo_cannot_take_the_program():
    """A per-op fallback (aten.alpha_dropout has no stacked rule; without tangent_grad it saves the
    generator's state, which Dynamo cannot trace): one warning naming the error, then eager owf's
    numbers for the same seed, and no second attempt."""
    import warnings
    import owf_kernels.jvp_trace as JT
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.AlphaDropout(0.3), nn.Linear(8, 3))
    x, v = torch.randn(4, 5), torch.randn(4, 5)
    JT.clear_cache()
    torch._dynamo.reset()
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match=r"compile=True.*could not take the whole program \(\w+") as record:
        y, yd = jvp(net, (x,), (v,), tangent_grad=False, compile=True)
    assert [w.filename for w in record if "compile=True" in str(w.message)] == [__file__]   # the caller's line
    torch.manual_seed(1)
    y0, yd0 = jvp(net, (x,), (v,), tangent_grad=False, compile=False)
    torch.testing.assert_close(y, y0)
    torch.testing.assert_close(yd, yd0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jvp(net, (x,), (v,), tangent_grad=False, compile=True)


def test_compile_true_past_dynamos_recompile_limit_runs_eagerly(monkeypatch):
    """A recompile past Dynamo's limit (here a module constant a rule reads changes, with the limit at
    one compile) warns and runs eagerly with eager owf's numbers, rather than raising."""
    import owf_kernels.attention_jvp as AJ
    import owf_kernels.jvp_trace as JT
    torch.manual_seed(0)
    net = N.DiT(image=(1, 8, 8), patch=2, width=16, depth=1, heads=2, zero_init=False)
    primals, tangents = meanflow_inputs(4, (1, 8, 8), 1)
    primals, tangents = tuple(p.float() for p in primals), tuple(t[0].float() for t in tangents)
    JT.clear_cache()
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    jvp(net, primals, tangents, tangent_grad=False, compile=True)
    monkeypatch.setattr(AJ, "TANGENT_CHUNK_BYTES", AJ.TANGENT_CHUNK_BYTES // 2)
    with pytest.warns(UserWarning, match=r"could not take the whole program \(FailOnRecompileLimitHit"):
        y, yd = jvp(net, primals, tangents, tangent_grad=False, compile=True)
    y0, yd0 = jvp(net, primals, tangents, tangent_grad=False, compile=False)
    torch.testing.assert_close(y, y0)
    torch.testing.assert_close(yd, yd0)
    torch._dynamo.reset()


def test_compile_true_raises_a_runtime_error_and_compiles_again_after_it():
    """An index out of range in a closed-over tensor: the error is raised (not a fallback warning), and
    once the index is fixed the program runs compiled."""
    import warnings
    import owf_kernels.jvp_trace as JT
    torch.manual_seed(0)
    emb, lin = nn.Embedding(10, 4), nn.Linear(4, 3)
    idx = torch.tensor([1, 2, 3, 12])
    x, v = torch.randn(4, 4), torch.randn(4, 4)
    f = lambda x: lin(x + emb(idx))                   # noqa: E731
    JT.clear_cache()
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises((RuntimeError, IndexError), match="out of (bounds|range)"):
            jvp(f, (x,), (v,), tangent_grad=False, compile=True)
        idx.copy_(torch.tensor([1, 2, 3, 4]))
        y, yd = jvp(f, (x,), (v,), tangent_grad=False, compile=True)
    torch.testing.assert_close(y, lin(x + emb(idx)))
    torch.testing.assert_close(yd, v @ lin.weight.T)
    assert [callable(f) for e in JT._CACHE.values() for f in e[1].compiled.values()] == [True]


def test_bad_calls_are_named():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="2 primals but 1 tangents"):
        jvp(lambda a, b: a * b, (x, x), (x,))
    with pytest.raises(ValueError, match="tangents must all be like their primals or all"):
        jvp(lambda a, b: a * b, (x, x), (x, x[None]))
    with pytest.raises(ValueError, match=r"the primal \(primal 1\) must be floating point.*close over integer"):
        jvp(lambda a, b: a * b, (x, torch.ones(3, 2, dtype=torch.long)), (x, x))


def _rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.mark.parametrize("which", ["mlp", "dit"])
def test_under_cpu_autocast_as_torch_func_jvp(which, traces):
    """Inside torch.autocast("cpu", dtype=torch.bfloat16) the trace holds autocast's casts (a bf16
    Linear, SDPA and matmul; float32 parameters): the outputs and tangents are bf16 as torch.func.jvp's,
    within bf16's rounding of float64, and the parameters' gradients with them; the same call
    outside autocast is another trace, in float32."""
    torch.manual_seed(0)
    if which == "mlp":
        net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 5))
        primals, tangents = [torch.randn(4, 6)], [torch.randn(2, 4, 6)]
        f, ref, f64 = net, net, copy.deepcopy(net).double()
    else:
        net = N.DiT(image=(1, 8, 8), patch=2, width=16, depth=1, heads=2, num_classes=3, zero_init=False)
        labels = torch.tensor([2, 0, 1])
        primals, tangents = meanflow_inputs(3, (1, 8, 8), 2)
        primals, tangents = [p.float() for p in primals], [t.float() for t in tangents]
        o, o64 = oracle(net), oracle(copy.deepcopy(net).double())
        f = lambda z, t, r: net(z, t, r, labels)                           # noqa: E731
        ref = lambda z, t, r: o(z, t, r, labels)                            # noqa: E731
        f64 = lambda z, t, r: o64(z, t, r, labels)                          # noqa: E731
    T = tangents[0].shape[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, yd = jvp(f, tuple(primals), tuple(tangents))
        outs = [torch.func.jvp(ref, tuple(primals), tuple(v[t] for v in tangents)) for t in range(T)]
    ry, ryd = outs[0][0], torch.stack([o[1] for o in outs])
    assert y.dtype == ry.dtype == yd.dtype == ryd.dtype == torch.bfloat16
    exact = [torch.func.jvp(f64, tuple(p.double() for p in primals), tuple(v[t].double() for v in tangents))
             for t in range(T)]
    ey, eyd = exact[0][0], torch.stack([o[1] for o in exact])
    assert _rel(y, ey) < 2e-2 and _rel(yd, eyd) < 3e-2
    assert _rel(y, ry) < 2e-2 and _rel(yd, ryd) < 3e-2
    params = list(net.parameters())
    got = torch.autograd.grad(loss(y.float(), yd.float()), params)
    want = torch.autograd.grad(loss(ry.float(), ryd.float()), list(ref.parameters()) if which == "mlp"
                               else list(o.parameters()))
    assert all(g.dtype == torch.float32 for g in got)
    assert _rel(torch.cat([g.flatten() for g in got]), torch.cat([w.flatten() for w in want])) < 5e-2
    y32, yd32 = jvp(f, tuple(primals), tuple(tangents))
    assert y32.dtype == yd32.dtype == torch.float32 and len(traces) == 2


def test_plain_attributes_and_requires_grad_are_in_the_key(traces):
    """What a trace bakes in from Python is in its key: a `self.scale` float, Dropout.p, the
    training flag, whether the parameters require grad; each change retraces and the numbers
    follow it (against torch.func.jvp in float64)."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.drop, self.scale = nn.Linear(3, 4).double(), nn.Dropout(0.0), 2.0

        def forward(self, x):
            return self.drop(torch.tanh(self.lin(x)) * self.scale)
    net = Scaled()
    x, v = torch.randn(5, 3, dtype=DT), torch.randn(5, 3, dtype=DT)

    def same():
        y, yd = jvp(net, (x,), (v,))
        ry, ryd = torch.func.jvp(net, (x,), (v,))
        torch.testing.assert_close(y, ry)
        torch.testing.assert_close(yd, ryd)
    same()
    net.scale = 3.0
    same()
    net.drop.p = 1.0                                              # drops everything
    y, yd = jvp(net, (x,), (v,))
    assert not y.any() and not yd.any()
    net.drop.p = 0.0
    net.lin.requires_grad_(False)
    same()
    net.scale = 2.0                                               # the first signature again: cached
    net.lin.requires_grad_(True)
    same()
    assert len(traces) == 4


@pytest.mark.parametrize("where", ["forward hook", "pre-hook", "global hook"])
def test_forward_hooks_are_refused_in_one_line(where):
    """A hook would run once, at trace time, on fake tensors (its side effects lost, its
    tensors fake): refused, naming the module."""
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh()).double()
    seen = []
    if where == "forward hook":
        handle = net[1].register_forward_hook(lambda m, i, o: seen.append(o))
        match = r"Tanh \(at 1\) has a forward hook"
    elif where == "pre-hook":
        handle = net.register_forward_pre_hook(lambda m, i: seen.append(i))
        match = r"Sequential has a forward pre-hook"
    else:
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(o))
        match = r"a global module forward hook is registered"
    try:
        with pytest.raises(ValueError, match=match) as e:
            jvp(net, (torch.randn(2, 3, dtype=DT),), (torch.randn(2, 3, dtype=DT),))
    finally:
        handle.remove()
    assert "\n" not in str(e.value) and not seen


def test_a_custom_autograd_function_is_refused_in_one_line():
    """make_fx records a Function's forward ops only: its own jvp (here 100·ẋ, not 2xẋ) and
    backward would be dropped silently. Refused, naming it; Function.apply works after."""
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            return 2 * g * ctx.saved_tensors[0]

        @staticmethod
        def jvp(ctx, t):
            return 100 * t
    x, v = torch.randn(3, dtype=DT), torch.randn(3, dtype=DT)
    with pytest.raises(ValueError, match=r"calls the autograd.Function .*Square: a trace would inline") as e:
        jvp(lambda h: Square.apply(h).sin(), (x,), (v,))
    assert "\n" not in str(e.value)
    torch.testing.assert_close(Square.apply(x), x * x)


GAIN = 2.0


def test_a_scalar_global_and_closure_value_are_in_the_key(traces):
    """A module-level float the function names and a float it closes over: changing either retraces
    (the numbers follow, against torch.func.jvp); a global config object would be baked in."""
    global GAIN
    x, v = torch.randn(4, dtype=DT), torch.randn(4, dtype=DT)
    offset = 0.5

    def f(h):
        return torch.sin(h * GAIN) + offset * h * h

    def same():
        y, yd = jvp(f, (x,), (v,))
        ry, ryd = torch.func.jvp(f, (x,), (v,))
        torch.testing.assert_close(yd, ryd)
    try:
        same()
        GAIN = 3.0
        same()
        offset = 1.5                                              # noqa: F841 - read by f through its cell
        same()
    finally:
        GAIN = 2.0
    assert len(traces) == 3


@pytest.mark.parametrize("tangent_grad", [True, False])
def test_a_dcgan_generator_under_cpu_autocast(tangent_grad):
    """A train-mode DCGAN generator (the fused Linear/ConvTranspose + BatchNorm + activation layers)
    under bf16 autocast: BatchNorm keeps autocast's bf16 activations while its parameters are
    float32, so each step's output takes its traced dtype (the epilogue promoted to float32 and the
    next convolution refused it). torch.func.jvp refuses train-mode BatchNorm (and fails on this
    network under autocast in eval mode), so the reference is the plain forward under the same
    autocast and owf's float64 tangents, within bf16's rounding (a ReLU flips where a bf16 rounding
    changes a sign: a few % of the tangent, as torch.func.jvp of the network in bf16)."""
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(16, 32 * 4 * 4), nn.BatchNorm1d(32 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (32, 4, 4)),
                      nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.BatchNorm2d(16), nn.LeakyReLU(0.2),
                      nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Tanh())
    g64 = copy.deepcopy(g).double()
    x, V = torch.randn(32, 16), torch.randn(2, 32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, yd = jvp(g, (x,), (V,), tangent_grad=tangent_grad)
        plain = copy.deepcopy(g)(x)
    ey, eyd = jvp(g64, (x.double(),), (V.double(),))
    assert y.dtype == yd.dtype == plain.dtype == torch.bfloat16
    assert _rel(y, plain) < 1e-2 and _rel(y, ey) < 2e-2 and _rel(yd, eyd) < 1e-1
    torch.testing.assert_close(g[1].running_mean, g64[1].running_mean.float(), atol=1e-2, rtol=1e-2)


def test_a_sequential_slice_made_at_each_call_traces_once(traces):
    """owf.model calls jvp(self.net[:-1], ...): a new nn.Sequential each call, with the same children.
    A Sequential is keyed by its children, so the slice traces once (it traced at every call);
    another child in its place traces again, and the numbers follow (against torch.func.jvp)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh()).double()
    x, v = torch.randn(5, 3, dtype=DT), torch.randn(5, 3, dtype=DT)
    for _ in range(3):
        y, yd = jvp(net[:-1], (x,), (v,))
    torch.testing.assert_close(yd, torch.func.jvp(net[:-1], (x,), (v,))[1])
    assert len(traces) == 1
    net[1] = nn.Sigmoid()                                          # no parameters: only its identity differs
    y, yd = jvp(net[:-1], (x,), (v,))
    torch.testing.assert_close(yd, torch.func.jvp(net[:-1], (x,), (v,))[1])
    assert len(traces) == 2

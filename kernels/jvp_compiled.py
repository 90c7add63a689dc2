"""owf's stacked program handed to Inductor: `jvp(..., tangent_grad=False, compile=True)`, and what jvp
does by default when its caller runs under torch.compile.

jvp_runner.run is Python over the program's steps (a list of rules, an environment of Duals).
torch.compile(fullgraph=True) traces that loop once per program and call layout into one graph with no
Python left in it, and Inductor compiles it with the backward the primal needs (AOTAutograd):

    compiled(lifted, primals, tangents [T, ...]) -> [(y, ẏ) or (y, None) per flat output]

so the elementwise passes between the GEMMs (the attention tangent's over the [B, H, L, S] scores,
adaLN's modulate, the norms, GELU) fuse, which eager owf cannot do and which is what compiled PyTorch
wins by (docs/jvp.md). fullgraph is the point: a graph break inside the runner is an error here,
not a split. (Letting the caller's Dynamo trace the runner was tried: a graph break inside owf's
no_grad region then dropped a convolution's weight gradient, docs/jvp.md.) If Dynamo cannot take the
whole program (a rule it cannot trace, e.g. a per-op torch.func.jvp fallback that warns), the call
warns once, naming the error, and that program runs eagerly from then on; a runtime error (a bad
index) is raised as eagerly, and the next call compiles again.

Only without tangent_grad: the tangents are computed under no_grad, so no gradient flows through a
stacked [1+T, B, ...] tensor, where Inductor (torch 2.14.1, CPU) computes a wrong convolution-weight
gradient (docs/jvp.md). Random ops (dropout) draw from Inductor's generator, as under torch.compile
generally: the same mask for the primal and the tangents, not eager owf's numbers.

One compiled function per (trace, T, BatchNorm mode, layout, flash backend on): each gets a code object
of its own, so Dynamo's per-code recompile limit is never shared between networks, and contiguous
inputs, so strides do not recompile it; what still does (a module constant a rule reads) counts
against that limit, past which the program runs eagerly, with the warning. The first call
compiles (about 10 s for a small network, 100 s for the 4-block DiT of the benchmarks on 2 cores).
"""
from __future__ import annotations

import warnings

import torch

from .jvp_dual import Ctx, Dual
from .jvp_runner import run
from .jvp_trace import autocast_off

_SERIAL = [0]


def _program_fn(program, T, batch_norm, channels_last, cma, flash):
    """The runner over `program` as a function of tensors only (what Dynamo traces), with a code
    object of its own. `flash`: whether the flash SDPA backend is on (a constant of the graph: Dynamo
    cannot trace the C call that reads it)."""
    def owf_jvp_program(lifted, primals, tangents):
        ctx = Ctx(T, batch_norm, False, channels_last, lifted, cma, flash)
        flat = run(program, ctx, list(lifted) + [Dual(p=x, t=v) for x, v in zip(primals, tangents)])
        out = []
        for v in flat:
            if type(v) is Dual:
                y, yd = v.P()
                out.append((y.contiguous(), yd.contiguous()))
            else:
                out.append((v, None))
        return out
    _SERIAL[0] += 1
    owf_jvp_program.__code__ = owf_jvp_program.__code__.replace(co_name=f"owf_jvp_program_{_SERIAL[0]}")
    return owf_jvp_program


def run_compiled(trace, program, ctx, lifted, primals, tangents):
    """The flat outputs of `program` (Duals or tensors, as jvp_runner.run returns them), by its
    compiled function, compiling it on the first call of this layout; None where the program runs
    eagerly (Dynamo could not take it, or hit its recompile limit: warned once): the caller then runs
    it itself. Any other error (a bad index, out of memory) is raised, and the next call tries again."""
    flash = torch.backends.cuda.flash_sdp_enabled()
    key = (ctx.T, ctx.batch_norm, ctx.channels_last, flash)
    fn = trace.compiled.get(key)
    if fn is False:
        return None
    if fn is None:
        fn = trace.compiled[key] = torch.compile(
            _program_fn(program, ctx.T, ctx.batch_norm, ctx.channels_last, trace.cma, flash), fullgraph=True,
            dynamic=False)
    # contiguous inputs: one layout per key, so strides alone never recompile (eager owf's outputs are
    # contiguous too: jvp._outputs)
    try:
        return _call(trace, fn, lifted, [x.contiguous() for x in primals], [v.contiguous() for v in tangents])
    except _COMPILE_ERRORS as e:
        trace.compiled[key] = False
        warnings.warn(f"owf_kernels.jvp(compile=True): torch.compile could not take the whole program "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it runs eagerly",
                      stacklevel=5)
        return None


# What makes a program run eagerly: Dynamo cannot trace it (Unsupported, and the other
# TorchDynamoExceptions: a backend failure, an internal error) or it recompiled past Dynamo's limit.
_COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)


def _call(trace, fn, lifted, primals, tangents):
    with autocast_off(trace):
        pairs = fn(lifted, list(primals), list(tangents))
    return [v if t is None else Dual(p=v, t=t) for v, t in pairs]

"""owf_kernels.jvp: forward-mode Jacobian-vector products of whole networks, a drop-in for
torch.func.jvp that shares one primal pass among T tangents.

    y, y_dot = jvp(model, (x,), (v,))                      # v like x: one tangent, y_dot like y
    y, Y_dot = jvp(model, (x,), (V,))                      # V [T, *x.shape]: T tangents, [T, *y.shape]
    u, du = jvp(lambda z, t, r: model(z, t, r, y), (z, t, r), (v, ones, zeros), tangent_grad=False)   # MeanFlow
    (a, b), (da, db), aux = jvp(f, (x,), (v,), has_aux=True)

func is any nn.Module or callable of the primals (tensors it reads from elsewhere, such as labels,
are closed over). It runs in three stages:
1. trace (jvp_trace): make_fx to an ATen graph, once per signature (shapes, dtypes, requires_grad,
   the modules' training flags and scalar attributes, grad and autocast modes; not T), with
   parameters, buffers and closed-over tensors as inputs: closures and globals otherwise are baked in;
2. rules (jvp_rules): one stacked rule per ATen op; the primal and its tangents travel as one
   tensor [1+T, ...] through linear ops (each runs once over the merged batch) and as a pair
   through elementwise chains;
3. the stacked runner (jvp_runner): fusion rules for today's layers (an MLP run through mlp_jvp; a
   linear op with its bias, BatchNorm and activation as one epilogue, Triton on CUDA), the per-op
   torch.func.jvp fallback, each value freed after its last use; with compile (tangent_grad=False),
   that program compiled by Inductor as one graph (jvp_compiled), the default under torch.compile.

BatchNorm in train mode (batch_norm=):
  "batch"       the tangents flow through the batch mean and variance, as forward-mode AD (and
                torch.autograd.forward_ad) differentiates it: the drop-in.
  "per_sample"  the statistics come from the primal batch and are constants for the tangents: each
                sample's own Jacobian (what a per-sample log|det J| such as Eq. 10's means).
In eval mode the two are the same. Running statistics are updated once per call, from the primal.
(torch.func.jvp itself refuses a train-mode BatchNorm: its running-statistics update mutates a
captured tensor.)

tangent_grad=True: everything is differentiable in the primals and every parameter, through the
outputs and their tangents. tangent_grad=False (MeanFlow, sCM and free-form flows detach the
tangent): the tangents carry no graph, and the primal's graph is the plain forward's (one pass:
the primal runs once, its backward keeps none of the tangents' activations).
"""
from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

from .backend import use_triton
from .jvp_layers import BATCH_NORM_MODES
from .jvp_dual import Ctx, Dual
from .jvp_compiled import run_compiled
from .jvp_runner import build, run
from .jvp_trace import autocast_off, clear_cache, get_trace

__all__ = ["jvp", "clear_cache"]


def _check_call(primals, tangents, batch_norm):
    """-> (primals, tangents each [T, *shape], single, T); ValueError naming what is wrong."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm={batch_norm!r} is not one of {BATCH_NORM_MODES}")
    for name, arg in (("primals", primals), ("tangents", tangents)):
        if not isinstance(arg, (tuple, list)) or not arg or not all(isinstance(a, torch.Tensor) for a in arg):
            raise ValueError(f"{name} must be a tuple of tensors, as in torch.func.jvp(f, (x,), (v,)); got "
                             f"{type(arg).__name__}" + (f" of {[type(a).__name__ for a in arg]}"
                                                        if isinstance(arg, (tuple, list)) else ""))
    if len(primals) != len(tangents):
        raise ValueError(f"{len(primals)} primals but {len(tangents)} tangents: one tangent per primal")
    singles, Vs, Ts = [], [], set()
    for i, (x, v) in enumerate(zip(primals, tangents)):
        which = f" (primal {i})" if len(primals) > 1 else ""
        if not x.is_floating_point():
            raise ValueError(f"the primal{which} must be floating point, got {x.dtype}: close over integer inputs "
                             "such as labels (lambda x: f(x, labels))")
        if v.dtype != x.dtype or v.device != x.device:
            raise ValueError(f"the tangent{which} is {v.dtype} on {v.device}, the primal {x.dtype} on {x.device}: "
                             "they must match")
        if v.shape == x.shape:
            singles.append(True)
            Vs.append(v.unsqueeze(0))
        elif v.dim() == x.dim() + 1 and v.shape[1:] == x.shape and v.shape[0] >= 1:
            singles.append(False)
            Vs.append(v)
        else:
            raise ValueError(f"tangent shape {tuple(v.shape)}{which} is neither the primal's {tuple(x.shape)} nor "
                             f"[T, *{tuple(x.shape)}]")
        Ts.add(Vs[-1].shape[0])
    if len(set(singles)) > 1 or len(Ts) > 1:
        raise ValueError(f"tangents must all be like their primals or all [T, ...] with one T; got "
                         f"{[tuple(v.shape) for v in tangents]} for primals {[tuple(x.shape) for x in primals]}")
    return tuple(primals), Vs, singles[0], Ts.pop()


def _channels_last(x: torch.Tensor) -> bool:
    """Whether the fused layers' convolutions run channels_last: on the CPU's torch epilogue, where
    oneDNN computes in it and an NCHW tensor costs a layout copy each way around every transposed
    convolution (docs/jvp.md); not inside a torch.func transform (vmap cannot query a layout)."""
    return (x.device.type == "cpu" and not use_triton(x)
            and torch._C._functorch.peek_interpreter_stack() is None)


def jvp(func, primals, tangents, *, has_aux: bool = False, tangent_grad: bool = True, batch_norm: str = "batch",
        compile: bool | None = None):
    """(func(*primals), J·tangents) like torch.func.jvp(func, primals, tangents, has_aux=...); a
    tangent [T, *x.shape] for each primal gives outputs' tangents [T, *y.shape] from one primal pass.
    With has_aux, func returns (output, aux) and jvp returns (output, tangents, aux). See the module
    docstring for batch_norm and tangent_grad.

    compile: run owf's stacked program compiled by Inductor (jvp_compiled; only with
    tangent_grad=False; the first call of a signature compiles it). None, the default: compiled when
    jvp is called under torch.compile with tangent_grad=False, eager otherwise. Under torch.compile jvp
    is a graph break either way: the caller's Dynamo never traces owf's runner.

    func is traced once per signature and the trace replayed: Python side effects (prints, counters,
    appends) happen once, at trace time, on fake tensors, and Python values func reads that are not
    in the cache key (a global config object or list, closed-over mutable objects, attributes of
    plain objects) are baked in; call clear_cache() after changing one (jvp_trace's docstring lists
    the key: shapes, dtypes, requires_grad, every module's scalar attributes and training flag,
    scalar globals and closure values, grad and autocast modes).
    Forward hooks and custom torch.autograd.Functions are refused (ValueError naming them)."""
    if compile is None:
        compile = torch.compiler.is_compiling() and not tangent_grad
    return _jvp(func, primals, tangents, has_aux, tangent_grad, batch_norm, compile)


# torch.compile runs _jvp eagerly (a graph break): Inductor (torch 2.14.1, CPU) computed a wrong
# convolution-weight gradient for the stacked layout (a conv over [1+T, B, ...] viewed as one batch,
# an activation on its [0] and [1:] slices, then a Linear: 8.5 off where the gradient is 23, while
# aot_eager and eager agree; docs/jvp.md has the pure-PyTorch repro). Letting Dynamo trace jvp for
# tangent_grad=False was tried (2026-12-04): a graph break inside the runner made Dynamo drop a
# convolution's weight gradient (no gradient at all, even with backend="eager"). So the caller's
# Dynamo stops here, and compile=True hands owf's own program to torch.compile(fullgraph=True).
@torch.compiler.disable
def _jvp(func, primals, tangents, has_aux, tangent_grad, batch_norm, compile):
    if compile and tangent_grad:
        raise ValueError("owf_kernels.jvp(compile=True) needs tangent_grad=False: with gradients through the "
                         "stacked [1+T, B, ...] tensors Inductor (torch 2.14.1) computes a wrong convolution-weight "
                         "gradient (docs/jvp.md); call it with compile=False")
    primals, Vs, single, T = _check_call(primals, tangents, batch_norm)
    trace, tensors = get_trace(func, primals, has_aux)
    program = trace.programs.get(bool(tangent_grad))
    if program is None:
        program = trace.programs[bool(tangent_grad)] = build(trace, bool(tangent_grad))
    lifted = [None] * (max(trace.unique) + 1 if trace.unique else 0)
    for t, u in zip(tensors, trace.unique):
        lifted[u] = t
    ctx = Ctx(T, batch_norm, bool(tangent_grad), program.has_conv_layer and _channels_last(primals[0]), lifted,
              trace.cma)
    flat = run_compiled(trace, program, ctx, lifted, primals, Vs) if compile else None
    if flat is None:
        with autocast_off(trace):
            flat = run(program, ctx, lifted + [Dual(p=x, t=v) for x, v in zip(primals, Vs)])
    return _outputs(trace, flat, ctx, single, has_aux)


def _outputs(trace, flat, ctx, single, has_aux):
    """The flat tensor outputs back into func's structure: (out, tangents[, aux])."""
    it = iter(flat)
    leaves = [next(it) if is_t else c for is_t, c in zip(trace.tensor_leaf, trace.consts)]
    ys, yds = [], []
    for k, v in enumerate(leaves):
        if k >= trace.n_out:                                           # aux: the primal value, no tangent
            ys.append(v.primal if type(v) is Dual else v)
            yds.append(ys[-1])
            continue
        if type(v) is Dual:
            y, yd = v.P()
            y, yd = y.contiguous(), yd.contiguous()                    # torch.func.jvp's layout
        elif isinstance(v, torch.Tensor):
            y, yd = v, v.new_zeros(()).expand(ctx.T, *v.shape).contiguous()     # no dependence on the primals
        else:
            raise ValueError(f"owf_kernels.jvp: func returned {type(v).__name__} where a tensor was expected")
        ys.append(y)
        yds.append(yd[0] if single else yd)
    out, tan = pytree.tree_unflatten(ys, trace.spec), pytree.tree_unflatten(yds, trace.spec)
    if has_aux:
        return out[0], tan[0], out[1]
    return out, tan

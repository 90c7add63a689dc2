"""owf_kernels.jvp: forward-mode Jacobian-vector products of whole networks, a drop-in for
torch.func.jvp that shares one primal pass among T tangents.

    y, y_dot = jvp(model, (x,), (v,))                 # v like x: one tangent, y_dot like y
    y, y_dot = jvp(model, (x,), (V,))                 # V [T, *x.shape]: T tangents, y_dot [T, *y.shape]

For a module built of the supported types (nested nn.Sequential of Linear, Conv2d, ConvTranspose2d,
BatchNorm1d/2d, ReLU, LeakyReLU, Tanh, Sigmoid, Softplus, SiLU, ELU, GELU, Flatten, Unflatten,
Identity and eval-mode Dropout) the primal and the tangents travel as one stacked tensor
[1+T, B, ...] (`jvp_layers`): each linear op runs once over the merged batch, and the bias,
BatchNorm and activation of a layer, with their tangents, form one epilogue: torch ops on the CPU
(`jvp_layers.epilogue_torch`, the oracle), one Triton kernel forward and one backward on CUDA
(`jvp_epilogue_triton`; GELU layers keep the torch ops). Any other module, and a
plain function, runs through torch.func.jvp vmapped over the tangents, with a warning naming its
type once, so that the answer is the same and the slow layer is known.

BatchNorm in train mode (batch_norm=):
  "batch"       the tangents flow through the batch mean and variance, as forward-mode AD (and
                torch.autograd.forward_ad) differentiates it: the drop-in.
  "per_sample"  the statistics come from the primal batch and are constants for the tangents: each
                sample's own Jacobian (what a per-sample log|det J| such as Eq. 10's means).
In eval mode the two are the same. Running statistics are updated once per call, from the primal.
(torch.func.jvp itself refuses a train-mode BatchNorm: its running-statistics update mutates a
captured tensor.)

Everything is differentiable in the input and every parameter, through y and y_dot. With
tangent_grad=False the tangents carry no graph and y's backward is the plain forward's.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .jvp_layers import (ACTIVATION_RULES, BATCH_NORM_MODES, BATCH_NORMS, LINEAR_OPS, SHAPE_OPS, epilogue_torch,
                         fused_rule_problem, linear_op, unstack)
from .backend import use_triton
from .linear_jvp import const_tangents
from .mlp_jvp import mlp_jvp

# activations that linear_jvp's own epilogue computes (and their names there): a run of Linear
# layers with these and no BatchNorm goes to mlp_jvp, one autograd node for the whole run
MLP_ACTIVATIONS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu"}

_WARNED: set = set()


def _leaves(module: nn.Module):
    """The modules of a nested nn.Sequential in call order (a non-Sequential module is a leaf)."""
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def plan(module: nn.Module) -> list[tuple]:
    """The steps of the stacked pass: ("layer", op, bn, act, act_module) for a linear op (or None)
    followed by an optional BatchNorm and an optional activation; ("shape", m) for Flatten and
    Unflatten; ("fallback", m, why) for a module without a fused rule. Identity and eval-mode
    Dropout are dropped."""
    leaves = list(_leaves(module))
    steps, i = [], 0
    while i < len(leaves):
        m = leaves[i]
        why = fused_rule_problem(m)
        if why is not None:
            steps.append(("fallback", m, why))
            i += 1
            continue
        if isinstance(m, (nn.Identity, nn.Dropout)):
            i += 1
            continue
        if isinstance(m, SHAPE_OPS):
            steps.append(("shape", m))
            i += 1
            continue
        op = m if isinstance(m, LINEAR_OPS) else None
        i += op is not None
        bn = act = None
        if i < len(leaves) and isinstance(leaves[i], BATCH_NORMS) and fused_rule_problem(leaves[i]) is None:
            bn = leaves[i]
            i += 1
        if i < len(leaves) and type(leaves[i]) in ACTIVATION_RULES:
            act = leaves[i]
            i += 1
        steps.append(("layer", op, bn, None if act is None else ACTIVATION_RULES[type(act)](act), act))
    return _mlp_runs(steps)


def _mlp_act(step):
    """linear_jvp's name and slope for a step's activation, or None if it has none it computes."""
    act = step[4]
    if act is None:
        return "identity", 0.2
    if isinstance(act, nn.Softplus) and act.beta == 1 and act.threshold >= 20:
        return "softplus", 0.2           # linear_jvp's is exact; nn.Softplus returns z past the threshold, e^-20 apart
    name = MLP_ACTIVATIONS.get(type(act))
    return None if name is None else (name, getattr(act, "negative_slope", 0.2))


def _mlp_runs(steps):
    """Merge runs of ("layer", Linear, no BatchNorm, an activation linear_jvp computes) into ("mlp",
    linears, hidden, last, slope) as mlp_jvp takes them: every layer but the last with one
    activation (hidden), the last with its own, and one LeakyReLU slope for all."""
    out, run = [], []

    def flush():
        if run:
            acts = [_mlp_act(s) for s in run]
            hidden, last = acts[0], acts[-1]
            slope = hidden[1] if hidden[0] == "leaky_relu" else last[1]
            out.append(("mlp", [s[1] for s in run], hidden[0], last[0], slope))
            run.clear()

    for step in steps:
        if not (step[0] == "layer" and isinstance(step[1], nn.Linear) and step[2] is None
                and _mlp_act(step) is not None):
            flush()
            out.append(step)
            continue
        if run:
            hidden, new = _mlp_act(run[0]), _mlp_act(step)
            # appending makes run[-1]'s activation a hidden one: it must be the run's, and a new
            # LeakyReLU must share the run's slope
            if _mlp_act(run[-1]) != hidden or (new[0] == "leaky_relu" == hidden[0] and new[1] != hidden[1]):
                flush()
        run.append(step)
    flush()
    return out


def _warn_fallback(module, why: str):
    name = type(module).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"owf_kernels.jvp: {name} takes the torch.func.jvp fallback ({why}), vmapped over the "
                      "tangents: the same numbers, without the fused path's speed", RuntimeWarning, stacklevel=4)


def _fallback(func, H: torch.Tensor) -> torch.Tensor:
    """[y; ẏ] of func on H = [h; ḣ] by torch.func.jvp, vmapped over the T tangents (a random op,
    such as train-mode Dropout, draws the same for every tangent: the primal's mask). H in the
    layout plain PyTorch would hand the module (a channels_last H breaks a module's x.view)."""
    H = H.contiguous()
    h = H[0]
    y, yd = torch.func.vmap(lambda t: torch.func.jvp(func, (h,), (t,)), out_dims=(None, 0), randomness="same")(H[1:])
    return torch.cat([y.unsqueeze(0), yd])


def _check_params(steps, x):
    for step in steps:
        modules = [m for m in step[1:] if isinstance(m, nn.Module)]
        for m in modules:
            for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                if t is None or not t.is_floating_point():
                    continue
                if t.dtype != x.dtype or t.device != x.device:
                    raise ValueError(f"{type(m).__name__}.{name} is {t.dtype} on {t.device}, but the primal is "
                                     f"{x.dtype} on {x.device}: move the module or the inputs")


def run_stacked(steps, x: torch.Tensor, V: torch.Tensor, batch_norm: str, update_stats: bool = True):
    """The planned steps on x [B, ...] and V [T, B, ...] -> (y [B, ...], ẏ [T, B, ...]). The state
    is the stacked H = [h; ḣ] [1+T, B, ...] between layer steps; an MLP run takes and gives the pair
    (h, ḣ) as they are (mlp_jvp: tangents constant over the batch, such as the identity columns of
    an exact log-det, keep their broadcast path, and its outputs need no stacking copy at the end).
    x and V are stacked once up front unless that broadcast path takes them: an MLP run then runs its
    GEMMs over the stacked rows too (the separate pair would be two GEMMs per layer)."""
    keep_pair = not steps or (steps[0][0] == "mlp" and const_tangents(V))
    H, pair = (None, (x, V)) if keep_pair else (torch.cat([x.unsqueeze(0), V]), None)
    convs = any(s[0] == "layer" and isinstance(s[1], (nn.Conv2d, nn.ConvTranspose2d)) for s in steps)
    channels_last = convs and _channels_last(x)       # the backend is asked only of a network with convolutions
    for step in steps:
        kind = step[0]
        if kind == "mlp":
            _, linears, hidden, last, slope = step
            h, hd = pair if H is None else unstack(H)
            pair = mlp_jvp(h, hd, [m.weight for m in linears], [m.bias for m in linears], hidden, last, slope)
            H = None
            continue
        if H is None:
            # a copy even for mlp_jvp's outputs, which are one buffer: an as_strided view across
            # the two outputs of its autograd node would lose ẏ's gradient (autograd sees a view of y)
            H = torch.cat([pair[0].unsqueeze(0), pair[1]])
        if kind == "layer":
            _, op, bn, act, act_module = step
            A = linear_op(op, H, channels_last) if op is not None else H
            H = _epilogue(A, None if op is None else op.bias, bn, act, act_module, batch_norm, update_stats,
                          bias_last=isinstance(op, nn.Linear))
        elif kind == "shape":
            out = step[1](H.reshape(-1, *H.shape[2:]))
            H = out.view(H.shape[0], H.shape[1], *out.shape[1:])
        else:
            _warn_fallback(step[1], step[2])
            H = _fallback(step[1], H)
    if H is None:
        return pair
    y, yd = unstack(H)
    return y.contiguous(), yd.contiguous()     # torch.func.jvp's layout for a contiguous input


def _channels_last(x: torch.Tensor) -> bool:
    """Whether the convolutions run channels_last: on the CPU's torch epilogue, where oneDNN computes
    in it and an NCHW tensor costs a layout copy each way around every transposed convolution
    (docs/jvp.md); not inside a torch.func transform (vmap cannot query a layout)."""
    return (x.device.type == "cpu" and not use_triton(x)
            and torch._C._functorch.peek_interpreter_stack() is None)


def _epilogue(A, bias, bn, act, act_module, batch_norm, update_stats, bias_last):
    """A layer's epilogue: the Triton kernels where backend.use_triton says so and they have the
    activation (jvp_epilogue_triton; GELU has none), else the torch reference (jvp_layers)."""
    if (bias is not None or bn is not None or act is not None) and use_triton(A):
        from .jvp_epilogue_triton import can_run, epilogue_triton
        if can_run(A, bias, bn, act_module, bias_last):
            return epilogue_triton(A, bias, bn, act_module, batch_norm, update_stats, bias_last)
    return epilogue_torch(A, bias, bn, act, batch_norm, update_stats, bias_last)


def _check_call(primals, tangents, batch_norm):
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm={batch_norm!r} is not one of {BATCH_NORM_MODES}")
    for name, arg in (("primals", primals), ("tangents", tangents)):
        if not isinstance(arg, (tuple, list)) or len(arg) != 1 or not isinstance(arg[0], torch.Tensor):
            raise ValueError(f"{name} must be a tuple of one tensor, as in torch.func.jvp(f, (x,), (v,)); got "
                             f"{type(arg).__name__}" + (f" of length {len(arg)}" if isinstance(arg, (tuple, list)) else ""))
    x, v = primals[0], tangents[0]
    if not x.is_floating_point():
        raise ValueError(f"the primal must be floating point, got {x.dtype}")
    if v.dtype != x.dtype or v.device != x.device:
        raise ValueError(f"the tangent is {v.dtype} on {v.device}, the primal {x.dtype} on {x.device}: they must match")
    if v.shape == x.shape:
        return x, v.unsqueeze(0), True
    if v.dim() == x.dim() + 1 and v.shape[1:] == x.shape and v.shape[0] >= 1:
        return x, v, False
    raise ValueError(f"tangent shape {tuple(v.shape)} is neither the primal's {tuple(x.shape)} nor "
                     f"[T, *{tuple(x.shape)}]")


# torch.compile runs jvp eagerly (a graph break): Inductor (torch 2.14.1, CPU) computed a wrong
# convolution-weight gradient for this stacked layout (a conv over [1+T, B, ...] viewed as one batch,
# an activation on its [0] and [1:] slices, then a Linear: 8.5 off where the gradient is 23, while
# aot_eager and eager agree; docs/jvp.md has the pure-PyTorch repro).
@torch.compiler.disable
def jvp(func, primals, tangents, *, batch_norm: str = "batch", tangent_grad: bool = True):
    """(func(x), J v) like torch.func.jvp(func, (x,), (v,)); a tangent V [T, *x.shape] gives
    [T, *y.shape] from one primal pass. See the module docstring for batch_norm and tangent_grad."""
    x, V, single = _check_call(primals, tangents, batch_norm)
    if isinstance(func, nn.Module):
        steps = plan(func)
        _check_params(steps, x)
    else:
        steps = [("fallback", func, "a function, not a module")]
    if tangent_grad:
        y, yd = run_stacked(steps, x, V, batch_norm)
    else:
        if any(s[0] == "fallback" and isinstance(s[1], nn.Dropout) for s in steps):
            raise ValueError("tangent_grad=False with a train-mode Dropout: its mask would be drawn twice (for the "
                             "tangents and for the plain forward); put the Dropout in eval mode or keep tangent_grad")
        with torch.no_grad():                    # the tangents, with the statistics the forward below uses
            yd = run_stacked(steps, x, V, batch_norm, update_stats=False)[1]
        y = func(x)                              # the plain forward: its own backward, one stats update
    return y, (yd[0] if single else yd)

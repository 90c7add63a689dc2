"""Stage 3 of owf_kernels.jvp: the stacked runner. A trace (jvp_trace) becomes a `Program`, a list of
steps over an environment of values, once per (trace, tangent_grad); `run` executes it per call.

Building a program:
1. Which values carry tangents is known from the graph: the primals do, parameters, buffers and
   constants do not, and an op's output does when one of its inputs does (unless it carries none
   whatever its input: a comparison, an integer result, a `*_like` draw: jvp_rules.NO_TANGENT).
2. Fusion rules (tangent_grad=True), today's layer patterns over the graph:
   - "mlp": a run of aten.linear ops each followed (or not) by an activation that linear_jvp
     computes, with no other reader in between, goes to mlp_jvp: one autograd node for the run
     (the 2D generator's MLP, the DCGAN generator's first Linear);
   - "layer": a linear op (linear, conv2d, conv_transpose2d), then batch_norm and/or an activation,
     or a batch_norm then an activation, is one `linear_op` over the stacked rows (channels_last on
     the CPU; the one-channel transposed convolution as GEMM + col2im) and one epilogue:
     jvp_layers.epilogue_torch, or the Triton kernel on CUDA (jvp_epilogue_triton);
   and in both modes, after those (and not in a graph of mixed dtypes):
   - "chain": elementwise ops whose values only the chain reads, ending in one value, are one step
     (jvp_chain): their own rules one by one on the CPU, ONE generated Triton kernel on CUDA
     (jvp_chain_triton).
3. Every other op takes its rule from jvp_rules.RULES. An op without one goes through
   torch.func.jvp alone, vmapped over the tangents (`randomness="same"`), with a warning that names
   it once: a fallback per op, not per network. An in-place op (x.add_(y)) takes its out-of-place
   op's rule and its result stands for x from then on (the trace already reads it there); a write
   into a tensor that another view still reads later is refused, naming the op.
4. Each value is dropped after its last reader.
"""
from __future__ import annotations

import operator
import warnings

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree

from .backend import use_triton
from .jvp_chain import Chain, find_chains
from .jvp_layers import (ACTIVATION_OPS, ACTIVATION_RULES, BatchNormArgs, LinearOp, epilogue_torch, linear_op,
                         unstack)
from .jvp_dual import Dual, is_dual, primal
from .jvp_rules import INPLACE, NO_TANGENT, RULES
from .jvp_rules_nonlinear import batch_norm_const, resolve_momentum
from .linear_jvp import const_tangents, stacked_view
from .mlp_jvp import mlp_jvp

aten = torch.ops.aten
_WARNED: set = set()

# activations that linear_jvp computes (aten op -> (name, slope from the op's args))
MLP_ACTIVATIONS = {
    aten.relu.default: lambda a: ("relu", 0.2),
    aten.leaky_relu.default: lambda a: ("leaky_relu", a[1] if len(a) > 1 else 0.01),
    aten.tanh.default: lambda a: ("tanh", 0.2),
    aten.sigmoid.default: lambda a: ("sigmoid", 0.2),
    aten.silu.default: lambda a: ("silu", 0.2),
    # linear_jvp's softplus is exact; aten's returns z past the threshold, e^-20 apart
    aten.softplus.default: lambda a: ("softplus", 0.2) if (a[1:2] or [1])[0] == 1 and (a[2:3] or [20])[0] >= 20 else None,
}
LAYER_OPS = (aten.linear.default, aten.conv2d.default, aten.conv_transpose2d.input)


class Ref:
    """A value in the environment, by index."""
    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


def _resolve(a, env):
    t = type(a)
    if t is Ref:
        return env[a.i]
    if t is list:
        return [_resolve(x, env) for x in a]
    if t is tuple:
        return tuple([_resolve(x, env) for x in a])
    if t is dict:
        return {k: _resolve(v, env) for k, v in a.items()}
    return a


def _positional(target, args, kwargs):
    """(args, kwargs) with every keyword argument that the op's schema also takes by position moved
    to its position (the rules take them so), up to the last one given; keyword-only ones stay."""
    if not kwargs or not isinstance(target, torch._ops.OpOverload):
        return args, kwargs
    out, last, rest = list(args), len(args), dict(kwargs)
    for a in target._schema.arguments[len(args):]:
        if a.kwarg_only:
            continue
        if a.name in rest:
            out.append(rest.pop(a.name))
            last = len(out)
        else:
            out.append(a.default_value if a.has_default_value() else None)
    return tuple(out[:last]), rest


def node_args(n):
    """A node's (args, kwargs), positional where the schema allows (see _positional)."""
    return _positional(n.target, tuple(n.args), dict(n.kwargs))


def _plain(a):
    """fx's immutable_list / immutable_dict -> list / dict (so _resolve walks them by type)."""
    if isinstance(a, list):
        return [_plain(x) for x in a]
    if isinstance(a, tuple):
        return tuple(_plain(x) for x in a)
    if isinstance(a, dict):
        return {k: _plain(v) for k, v in a.items()}
    return a


def _warn_fallback(name: str, why: str):
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"owf_kernels.jvp: {name} {why}; it runs through torch.func.jvp, vmapped over the tangents: "
                      "the same numbers, without the stacked rule's speed", RuntimeWarning, stacklevel=5)


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
class Step:
    __slots__ = ("fn", "args", "kwargs", "out", "free", "name")

    def __init__(self, fn, args, kwargs, out, name):
        self.fn, self.args, self.kwargs, self.out, self.name = fn, args, kwargs, out, name
        self.free = ()


def _const(target):
    def run(ctx, *a, **k):
        return target(*a, **k)
    return run


def _no_tangent(target):
    def run(ctx, *a, **k):
        return target(*[primal(x) for x in a], **{n: primal(v) for n, v in k.items()})
    return run


def _rule(target, rule):
    def run(ctx, *a, **k):
        out = rule(ctx, *a, **k)
        if out is None:
            _warn_fallback(str(target), "has no stacked rule for these arguments")
            return fallback(ctx, target, a, k)
        return out
    return run


def _fallback_step(target):
    def run(ctx, *a, **k):
        return fallback(ctx, target, a, k)
    return run


def fallback(ctx, target, args, kwargs):
    """target's outputs and their tangents by torch.func.jvp, vmapped over the T tangents (a random
    op draws once for the primal and every tangent: randomness="same")."""
    flat, spec = pytree.tree_flatten((list(args), kwargs))
    idx = [i for i, a in enumerate(flat) if is_dual(a)]
    prims = tuple(flat[i].P()[0] for i in idx)
    tans = tuple(flat[i].P()[1] for i in idx)

    def f(*xs):
        fl = list(flat)
        for i, x in zip(idx, xs):
            fl[i] = x
        a, k = pytree.tree_unflatten(fl, spec)
        return target(*a, **k)
    if ctx.stack:
        y, yd = torch.func.vmap(lambda *ts: torch.func.jvp(f, prims, ts), out_dims=(None, 0), randomness="same")(*tans)
    else:
        # the primal with autograd, then the tangents again without: a random op (alpha_dropout,
        # rrelu) draws the same numbers the second time from the generator's state before the first
        rng = _rng_state(prims[0].device) if _seeded(target) else None
        y = f(*prims)
        with torch.no_grad():
            if rng is not None:
                _set_rng_state(prims[0].device, rng)
            yd = torch.func.vmap(lambda *ts: torch.func.jvp(f, prims, ts)[1], randomness="same")(*tans)
    if isinstance(y, torch.Tensor):
        return Dual(p=y, t=yd) if y.is_floating_point() or y.is_complex() else y
    return [Dual(p=a, t=b) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a, b in zip(y, yd)]


def _seeded(target) -> bool:
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in target.tags


def _rng_state(device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device, state):
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _mlp_step(layers):
    """mlp_jvp over a run: layers [(W, b, (act name, slope) or None)]; (hidden, last, slope) as today."""
    acts = [a or ("identity", 0.2) for _, _, a in layers]
    hidden, last = acts[0][0], acts[-1][0]
    slope = acts[0][1] if hidden == "leaky_relu" else acts[-1][1]

    def run(ctx, x, *params):
        Ws, bs = params[:len(layers)], params[len(layers):]
        p, t = x.P()
        if p.dim() != 2 or not (const_tangents(t) or stacked_view(p, t) is not None):
            # stacked first (a copy of (1+T)·B·n inputs) so each GEMM runs over the stacked rows;
            # batch-constant tangents (an exact log-det's identity columns) keep the broadcast path
            p, t = unstack(x.S())
        y, yd = mlp_jvp(p, t, list(Ws), list(bs), hidden, last, slope)
        return Dual(p=y, t=yd)
    return run


def _layer_step(kind, conv_args, has_bn, bn_args, act_target, act_args, act_kwargs):
    """linear_op then the epilogue (module docstring, "layer")."""
    act_module = ACTIVATION_OPS[act_target](None, *act_args, **act_kwargs) if act_target is not None else None
    act = ACTIVATION_RULES[type(act_module)](act_module) if act_module is not None else None

    def run(ctx, x, weight, bias, *bn_params):
        H = x.S()
        if kind is not None:
            A = linear_op(LinearOp(kind, weight, *conv_args), H, ctx.channels_last)
        else:
            A = H
        bn = None
        if has_bn:
            w, b, rm, rv = bn_params
            training, momentum, eps = bn_args
            bn = BatchNormArgs(w, b, rm, rv, bool(training), resolve_momentum(ctx, momentum), eps)
        return Dual(H=_epilogue(A, bias, bn, act, act_module, ctx.batch_norm, True, kind == "linear"))
    return run


def _epilogue(A, bias, bn, act, act_module, batch_norm, update_stats, bias_last):
    """A layer's epilogue: the Triton kernels where backend.use_triton says so and they have the
    activation (jvp_epilogue_triton; GELU has none), else the torch reference (jvp_layers)."""
    if (bias is not None or bn is not None or act is not None) and use_triton(A):
        from .jvp_epilogue_triton import can_run, epilogue_triton
        if can_run(A, bias, bn, act_module, bias_last):
            return epilogue_triton(A, bias, bn, act_module, batch_norm, update_stats, bias_last)
    return epilogue_torch(A, bias, bn, act, batch_norm, update_stats, bias_last)


# ---------------------------------------------------------------------------------------------
# Building a program
# ---------------------------------------------------------------------------------------------
class Program:
    def __init__(self, steps, n_env, placeholders, consts, outputs, has_conv_layer):
        self.steps, self.n_env, self.placeholders = steps, n_env, placeholders
        self.consts, self.outputs, self.has_conv_layer = consts, outputs, has_conv_layer


def _inputs(n):
    """The nodes n reads (through lists and dicts)."""
    out = []
    torch.fx.node.map_arg((n.args, n.kwargs), out.append)
    return out


def _float(v):
    return isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())


def build(trace, tangent_grad: bool) -> Program:
    gm = trace.gm
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    n_lifted = len(placeholders) - trace.n_primals
    dual = {n: i >= n_lifted for i, n in enumerate(placeholders)}
    lifted = {n for n in placeholders[:n_lifted]}
    consts = {}
    for n in nodes:
        if n.op == "get_attr":
            consts[index[n]] = getattr(gm, n.target)
            dual[n] = False
        elif n.op == "call_function":
            ins = _inputs(n)
            if n.target is operator.getitem:
                dual[n] = dual[n.args[0]] and _float(n.meta.get("val"))
            else:
                val = n.meta.get("val")
                floats = _float(val) or (isinstance(val, (list, tuple)) and any(_float(v) for v in val))
                dual[n] = any(dual[m] for m in ins) and n.target not in NO_TANGENT and floats
    fused = _fuse(nodes, dual) if tangent_grad else {}
    consumed = {m for f in fused.values() for m in f[1]}
    # a graph that mixes floating dtypes (autocast's bf16 activations, float32 BatchNorm parameters):
    # each dual step's output takes its node's traced dtype (a rule's arithmetic with a float32
    # parameter would promote where the op keeps its input's dtype)
    mixed = len({v.dtype for n in nodes for v in [n.meta.get("val")] if _float(v)}) > 1
    if not mixed:
        for members, leaves in find_chains(nodes, dual, consumed | set(fused), node_args):
            for m in members:
                if m.target in INPLACE:
                    _check_inplace(m, nodes, index, lifted)
            chain = Chain(members, leaves, lambda t: _rule(t, RULES[t]), node_args)
            fused[members[-1]] = (chain.step(), members[:-1], leaves, False)
            consumed.update(members[:-1])

    def traced(n, fn):
        return _as_traced(fn, n.meta["val"].dtype) if mixed and dual[n] and _float(n.meta.get("val")) else fn

    steps = []
    for n in nodes:
        if n.op != "call_function" or n in consumed:
            continue
        i = index[n]
        ref = lambda a: Ref(index[a])                                        # noqa: E731
        if n in fused:
            fn, _, ins, _ = fused[n]
            steps.append(Step(traced(n, fn), _plain(torch.fx.node.map_arg(tuple(ins), ref)), {}, i, str(n.target)))
            continue
        args, kwargs = _plain(torch.fx.node.map_arg(n.args, ref)), _plain(torch.fx.node.map_arg(n.kwargs, ref))
        t = n.target
        if dual[n]:
            args, kwargs = _positional(t, args, kwargs)
        any_dual = any(dual[m] for m in _inputs(n))
        if t is operator.getitem:
            fn = _const(t)
        elif not any_dual:
            fn = (lambda ctx, *a, **k: batch_norm_const(*a, **k, ctx=ctx)) if t is aten.batch_norm.default else _const(t)
        elif not dual[n]:
            fn = _no_tangent(t)
        else:
            functional = INPLACE.get(t)
            if functional is not None:
                _check_inplace(n, nodes, index, lifted)
            rule = RULES.get(functional or t)
            if rule is None:
                _warn_fallback(str(t), "has no stacked rule")
                fn = _fallback_step(functional or t)
            else:
                fn = _rule(functional or t, rule)
        steps.append(Step(traced(n, fn), args, kwargs, i, str(t)))

    out_node = next(n for n in nodes if n.op == "output")
    outputs = [Ref(index[a]) for a in out_node.args[0]]
    _free_after_last_use(steps, index, out_node)
    has_conv_layer = any(f[3] for f in fused.values())
    return Program(steps, len(nodes), [index[n] for n in placeholders], consts, outputs, has_conv_layer)


def _as_traced(fn, dtype):
    """fn, its Dual output cast to the traced dtype where a rule's promotion changed it."""
    def run(ctx, *a, **k):
        out = fn(ctx, *a, **k)
        if type(out) is Dual:
            if out.H is not None:
                return out if out.H.dtype == dtype else Dual(H=out.H.to(dtype))
            if out.p.dtype != dtype or out.t.dtype != dtype:
                return Dual(p=out.p.to(dtype), t=out.t.to(dtype))
        return out
    return run


def _check_inplace(n, nodes, index, lifted):
    """An in-place op on a value with a tangent runs out of place: refuse when another view of the
    written tensor is read after it (it would not see the write), or when it writes a tangent into a
    parameter or buffer."""
    target = n.args[0]
    if target in lifted:
        raise ValueError(f"owf_kernels.jvp: {n.target} writes a value with a tangent into a parameter or buffer "
                         f"({target.name}); detach it, or write it out of place")
    val = target.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return
    storage = StorageWeakRef(val.untyped_storage())
    here = index[n]
    for m in nodes[:here]:
        v = m.meta.get("val")
        if m is n or not isinstance(v, torch.Tensor) or StorageWeakRef(v.untyped_storage()) != storage:
            continue
        late = [u for u in m.users if index[u] > here]
        if late:
            raise ValueError(f"owf_kernels.jvp: {n.target} writes into {target.name}, which {m.name} (a view of the same "
                             f"memory) is read by {late[0].name} afterwards; write it out of place (x = x + y)")


def _single_user(n):
    return len(n.users) == 1


def _const_args(ns, dual):
    return all(not dual.get(m, False) for m in ns if isinstance(m, torch.fx.Node))


def _fuse(nodes, dual):
    """{last node of a pattern: (step fn, consumed nodes, input nodes, has a conv)} (module docstring)."""
    fused, taken = {}, set()
    for n in nodes:
        if n in taken or n.op != "call_function":
            continue
        run = _mlp_run(n, dual, taken)
        if run:
            layers, chain = run
            ins = [n.args[0]] + [W for W, _, _ in layers] + [b for _, b, _ in layers]
            fn = _mlp_step([(None, None, a) for _, _, a in layers])
            fused[chain[-1]] = (fn, chain[:-1], ins, False)
            taken.update(chain)
            continue
        layer = _layer(n, dual, taken)
        if layer:
            fn, chain, ins, conv = layer
            fused[chain[-1]] = (fn, chain[:-1], ins, conv)
            taken.update(chain)
    return fused


def _linear_layer(n, dual, taken):
    """(W, b) of an aten.linear node that a fusion can take: dual input, constant 2-D weight and bias."""
    if n.op != "call_function" or n.target is not aten.linear.default or n in taken or not dual.get(n.args[0], False):
        return None
    a = node_args(n)[0]
    W = a[1]
    b = a[2] if len(a) > 2 else None
    if not _const_args([W, b], dual) or W.meta.get("val") is None or W.meta["val"].dim() != 2:
        return None
    return W, b


def _mlp_act(n):
    """The MLP activation node following linear node n (its single reader), and its (name, slope); or (None, None)."""
    if not _single_user(n):
        return None, None
    u = next(iter(n.users))
    f = MLP_ACTIVATIONS.get(u.target)
    if f is None or u.args[0] is not n:
        return None, None
    act = f(node_args(u)[0])
    return (u, act) if act is not None else (None, None)


def _mlp_run(n, dual, taken):
    wb = _linear_layer(n, dual, taken)
    if wb is None:
        return None
    if _single_user(n) and next(iter(n.users)).target is aten.batch_norm.default:
        return None                                                  # a layer with BatchNorm: "layer"
    layers, chain, cur = [], [], n
    while True:
        W, b = wb
        act_node, act = _mlp_act(cur)
        if layers:
            hidden = layers[0][2] or ("identity", 0.2)
            prev = layers[-1][2] or ("identity", 0.2)
            new = act or ("identity", 0.2)
            # appending makes the last layer's activation a hidden one: it must be the run's, and a
            # new LeakyReLU must share the run's slope
            if prev != hidden or (new[0] == "leaky_relu" == hidden[0] and new[1] != hidden[1]):
                break
        layers.append((W, b, act))
        chain.append(cur)
        if act_node is not None:
            chain.append(act_node)
        end = chain[-1]
        if not _single_user(end):
            break
        nxt = next(iter(end.users))
        wb = _linear_layer(nxt, dual, taken) if nxt.args and nxt.args[0] is end else None
        if wb is None or (_single_user(nxt) and next(iter(nxt.users)).target is aten.batch_norm.default):
            break
        cur = nxt
    return layers, chain


def _layer(n, dual, taken):
    """A layer pattern starting at n: (step fn, chain, input nodes, has a conv) or None."""
    a = node_args(n)[0] if n.op == "call_function" else ()
    if n.target in LAYER_OPS:
        x = a[0]
        if not dual.get(x, False):
            return None
        kind = {aten.linear.default: "linear", aten.conv2d.default: "conv",
                aten.conv_transpose2d.input: "conv_transpose"}[n.target]
        W = a[1]
        b = a[2] if len(a) > 2 else None
        if not _const_args([W, b], dual) or not isinstance(W, torch.fx.Node):
            return None
        xv = x.meta.get("val")
        if kind != "linear" and (xv is None or xv.dim() != 4):
            return None
        if kind == "conv":
            s, p, d, g = _conv_args(a[3:], ((1, 1), (0, 0), (1, 1), 1))
            conv_args = (s, p, (0, 0), d, g)
        elif kind == "conv_transpose":
            s, p, op, g, d = _conv_args(a[3:], ((1, 1), (0, 0), (0, 0), 1, (1, 1)))
            conv_args = (s, p, op, d, g)
        else:
            conv_args = ()
        chain, cur = [n], n
    elif n.target is aten.batch_norm.default and dual.get(a[0], False):
        x, kind, W, b, conv_args, chain, cur = a[0], None, None, None, (), [], None
    else:
        return None
    bn_node = None
    if cur is None:
        bn_node = n
    elif _single_user(cur):
        u = next(iter(cur.users))
        if u.target is aten.batch_norm.default and u.args[0] is cur and u not in taken:
            bn_node = u
    if bn_node is not None:
        bn = node_args(bn_node)[0]
        if not _const_args(list(bn[1:5]), dual):
            return None
        chain.append(bn_node)
        cur = bn_node
    act_node = None
    if _single_user(cur):
        u = next(iter(cur.users))
        if u.target in ACTIVATION_OPS and u.args[0] is cur and u not in taken:
            ua, uk = node_args(u)
            if ACTIVATION_OPS[u.target](None, *ua[1:], **uk) is not None:
                act_node = u
                chain.append(u)
    if len(chain) < 2:
        return None                                                  # a lone op: its own rule
    bn = node_args(bn_node)[0] if bn_node is not None else ()
    act_args, act_kwargs = node_args(act_node) if act_node is not None else ((None,), {})
    fn = _layer_step(kind, conv_args, bn_node is not None, tuple(bn[5:8]),
                     act_node.target if act_node is not None else None, tuple(act_args[1:]), act_kwargs)
    return fn, chain, [x, W, b] + list(bn[1:5]), kind in ("conv", "conv_transpose")


def _conv_args(args, defaults):
    out = list(args) + list(defaults[len(args):])
    return tuple(tuple(a) if isinstance(a, list) else a for a in out)


def _free_after_last_use(steps, index, out_node):
    """Each step drops the values whose last reader it is (outputs are kept)."""
    keep = set()
    torch.fx.node.map_arg(out_node.args[0], lambda a: keep.add(index[a]))
    last = {}
    for k, s in enumerate(steps):
        for r in _refs((s.args, s.kwargs)):
            last[r] = k
    drop = [[] for _ in steps]
    for r, k in last.items():
        if r not in keep:
            drop[k].append(r)
    for s, d in zip(steps, drop):
        s.free = tuple(d)


def _refs(a):
    out = []

    def walk(x):
        if type(x) is Ref:
            out.append(x.i)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)
    walk(a)
    return out


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------
def run(program: Program, ctx, inputs):
    """inputs: the lifted tensors then one Dual per primal -> the flat outputs (Duals or tensors)."""
    env = [None] * program.n_env
    for i, v in zip(program.placeholders, inputs):
        env[i] = v
    for i, v in program.consts.items():
        env[i] = v
    for s in program.steps:
        env[s.out] = s.fn(ctx, *_resolve(s.args, env), **_resolve(s.kwargs, env)) if s.kwargs else \
            s.fn(ctx, *_resolve(s.args, env))
        for r in s.free:
            env[r] = None
    return _resolve(program.outputs, env)

"""Stage 1 of owf_kernels.jvp: trace a callable to an ATen graph, once per signature.

    trace = get_trace(func, primals, has_aux)     # cached: the same signature traces once

`torch.fx.experimental.proxy_tensor.make_fx(pre_dispatch=True, tracing_mode="fake")`, measured against
the alternatives on the networks of examples/networks.py (docs/jvp.md, "Tracing"):
- pre_dispatch keeps the ops at the level a rule wants them: aten.linear, conv2d, layer_norm,
  group_norm, rms_norm, batch_norm, scaled_dot_product_attention, dropout, einsum (the post-dispatch
  graph splits linear into t + addmm, batch_norm into its functional form with copies, and SDPA into
  the CPU flash kernel): 176 nodes for a 2-block DiT against 262, 417 for a SongUNet against 565.
- fake tensors: no data is read, so a Python branch on a tensor's value cannot be baked in silently;
  it raises (GuardOnDataDependentSymNode), which `get_trace` turns into a one-line ValueError.
  Tracing a depth-4 DiT takes about 0.2 s, once per signature.

What becomes a graph input (a placeholder) rather than a constant: the primals, and every tensor
the callable reads from outside, found where Python keeps it ("slots"):
- the parameters, buffers and plain tensor attributes of every nn.Module reachable from func (func
  itself, a bound method's self, a function's closure cells, defaults and the globals it names);
- tensors in a function's closure cells and defaults, and globals it names (labels closed over by
  the caller: `lambda z, t, r: model(z, t, r, y)`).
During tracing each slot holds a fake tensor, and is restored after. So one trace serves every call
with the same structure: a new lambda each step, new labels, updated parameters.

The cache key (`signature`): the callable's identity (a module's id; a function's code object and
the identities or values of what its closure holds), the primals' and lifted tensors' shapes,
dtypes, devices and requires_grad, every reached module's int/float/bool/str/None attributes (its
training flag, Dropout.p, a `self.scale`, `self.attn = "sdpa"`), has_aux, the grad mode and the
autocast state, and the int/float/bool/str/None globals a function names (and plain values in its
closure). Everything else Python reads while tracing is baked in: another global's value (a config
object, a list, a function of another module), an attribute of a plain object, a mutable object
closed over: change one and call `clear_cache()`.

Side effects run once, at trace time, on fake tensors: a print, a counter, a list that collects
activations. So forward hooks and pre-hooks (on any module reached, or global ones) are refused,
naming the module, and so is a custom torch.autograd.Function (make_fx records its forward's ops and
would drop its own jvp and backward); `autocast` regions active at the call are traced with their
casts made explicit (`_autocast_casts`) and run with autocast off.

nn.BatchNorm with momentum=None (a cumulative average, 1/num_batches_tracked) reads a tensor's value
in Python. It is traced with momentum set to -(k + 1) for the k-th such module, and the rule reads
num_batches_tracked when it runs (`Trace.cma`).
"""
from __future__ import annotations

import contextlib
import functools
import types
import weakref
from collections import OrderedDict

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

CACHE_SIZE = 64
_CACHE: OrderedDict = OrderedDict()
_PLAIN = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_SCALAR = frozenset((int, float, bool, str, type(None)))              # a module's attributes in the key


def clear_cache():
    """Forget every trace (after changing a Python attribute a trace has baked in)."""
    _CACHE.clear()


# ---------------------------------------------------------------------------------------------
# Slots: where a lifted tensor lives
# ---------------------------------------------------------------------------------------------
class Slot:
    """One place holding a tensor the callable reads: a module's parameter, buffer or attribute, a
    closure cell, a default or a global."""
    __slots__ = ("kind", "owner", "name")

    def __init__(self, kind, owner, name):
        self.kind, self.owner, self.name = kind, owner, name

    def get(self):
        k, o, n = self.kind, self.owner, self.name
        if k == "param":
            return o._parameters[n]
        if k == "buffer":
            return o._buffers[n]
        if k in ("attr", "global"):
            return o[n]
        if k == "cell":
            return o.cell_contents
        return o.__defaults__[n]                              # "default"

    def set(self, value):
        k, o, n = self.kind, self.owner, self.name
        if k == "param":
            o._parameters[n] = value
        elif k == "buffer":
            o._buffers[n] = value
        elif k in ("attr", "global"):
            o[n] = value
        elif k == "cell":
            o.cell_contents = value
        else:
            d = list(o.__defaults__)
            d[n] = value
            o.__defaults__ = tuple(d)


def _tensor_key(t):
    return ("t", tuple(t.shape), t.dtype, t.device.type)


def _module_path(root, mod):
    """'(at name) ' of a submodule inside root, '' for root itself."""
    if mod is root:
        return ""
    name = next((n for n, m in root.named_modules() if m is mod), None)
    return f"(at {name}) " if name else ""


class _Lifter:
    """Walks a callable and collects its slots, the modules it reaches, and a key of the rest."""

    def __init__(self):
        self.slots, self.modules, self.key, self._seen = [], [], [], set()

    def module(self, m: nn.Module):
        if id(m) in self._seen:
            self.key.append(("m", id(m)))
            return
        # an nn.Sequential is its children in order: keyed by them, not by its own id, so that a slice
        # made at each call (owf.model's `self.net[:-1]`) finds its trace instead of tracing again
        self.key.append(("seq", tuple(map(id, m._modules.values()))) if type(m) is nn.Sequential else ("m", id(m)))
        for mod in m.modules():
            if id(mod) in self._seen:
                continue
            self._seen.add(id(mod))
            self.modules.append(mod)
            d = mod.__dict__
            if d.get("_forward_hooks") or d.get("_forward_pre_hooks"):
                raise ValueError(f"owf_kernels.jvp: {type(mod).__name__} {_module_path(m, mod)}has a forward "
                                 f"{'hook' if d.get('_forward_hooks') else 'pre-hook'}, which would run once, at trace "
                                 "time, on fake tensors: remove it (or call the module itself) before jvp")
            tensors, scalars = _module_attrs(mod)
            # its plain attributes (training, Dropout.p, a `self.scale`), read in Python and baked in
            self.key.append(scalars)
            for name, t in mod._parameters.items():
                if t is not None:
                    self.slots.append(Slot("param", mod, name))
            for name, t in mod._buffers.items():
                if t is not None:
                    self.slots.append(Slot("buffer", mod, name))
            for name in tensors:
                self.slots.append(Slot("attr", d, name))

    def value(self, v, slot=None, depth=0):
        """A value the callable holds: a module, a tensor (lifted when it has a slot), a function
        (walked), or anything else (keyed by value or identity)."""
        if isinstance(v, nn.Module):
            self.module(v)
        elif isinstance(v, torch.Tensor):
            if slot is None:
                raise ValueError(f"owf_kernels.jvp: the callable holds a tensor {tuple(v.shape)} where it cannot be "
                                 "lifted as an input (a list, a partial's argument): pass it as a primal, or close "
                                 "over it directly")
            self.slots.append(slot)
            self.key.append(_tensor_key(v))
        elif isinstance(v, (types.FunctionType, types.MethodType, functools.partial)) and depth < 3:
            self.function(v, depth + 1)
        elif isinstance(v, _PLAIN):
            self.key.append(("v", v))
        elif isinstance(v, (tuple, list)) and len(v) < 16 and all(isinstance(e, _PLAIN) for e in v):
            self.key.append(("v", tuple(v)))
        else:
            self.key.append(("o", id(v)))

    def function(self, f, depth=0):
        if isinstance(f, nn.Module):
            self.module(f)
        elif isinstance(f, types.MethodType):
            self.value(f.__self__, None, depth)
            self.function(f.__func__, depth)
        elif isinstance(f, functools.partial):
            self.function(f.func, depth)
            for a in list(f.args) + list(f.keywords.values()):
                self.value(a, None, depth)
        elif isinstance(f, types.FunctionType):
            self.key.append(("f", f.__code__))
            if f.__module__ and f.__module__.startswith("torch"):
                return
            for cell in f.__closure__ or ():
                try:
                    v = cell.cell_contents
                except ValueError:                            # an empty cell (a name assigned later)
                    continue
                self.value(v, Slot("cell", cell, None), depth)
            for i, v in enumerate(f.__defaults__ or ()):
                self.value(v, Slot("default", f, i), depth)
            for name in _global_names(f.__code__):
                if name in f.__globals__:
                    v = f.__globals__[name]
                    if isinstance(v, (nn.Module, torch.Tensor)) or (
                            isinstance(v, types.FunctionType) and v.__module__ == f.__module__):
                        self.value(v, Slot("global", f.__globals__, name), depth)
                    elif type(v) in _SCALAR:
                        self.key.append(("g", name, v))               # a global scale or flag, by value
        elif callable(f) and hasattr(type(f), "__call__"):
            self.key.append(("c", id(f)))
            for name, v in vars(f).items() if hasattr(f, "__dict__") else ():
                if isinstance(v, torch.Tensor):
                    self.value(v, Slot("attr", f.__dict__, name), depth)
                elif isinstance(v, nn.Module):
                    self.module(v)
            call = type(f).__call__
            if isinstance(call, types.FunctionType):
                self.function(call, depth)
        else:
            raise ValueError(f"owf_kernels.jvp: func must be an nn.Module or a callable, got {type(f).__name__}")


# id(module) -> (a weak reference to it (a reused id does not match), its __dict__'s size, tensor
# attribute names, scalar attribute names)
_ATTRS: dict = {}


def _module_attrs(mod: nn.Module) -> tuple:
    """(names of mod's plain tensor attributes (not parameters or buffers), ((name, value) of its
    int/float/bool/str/None attributes)): the names rescanned when its __dict__ changes size or one
    of them stops being a tensor or a scalar (a few µs per call for a DCGAN's 13 modules)."""
    d = mod.__dict__
    hit = _ATTRS.get(id(mod))
    if hit is not None and hit[0]() is mod and hit[1] == len(d):
        values = tuple(map(d.get, hit[3]))
        if _SCALAR.issuperset(map(type, values)) and all(isinstance(d.get(n), torch.Tensor) for n in hit[2]):
            return hit[2], (hit[3], values)
    names = tuple(n for n, v in d.items() if isinstance(v, torch.Tensor))
    plain = tuple(n for n, v in d.items() if type(v) in _SCALAR)
    if len(_ATTRS) > 4096:
        _ATTRS.clear()
    _ATTRS[id(mod)] = (weakref.ref(mod), len(d), names, plain)
    return names, (plain, tuple(map(d.get, plain)))


@functools.lru_cache(maxsize=512)
def _global_names(code) -> tuple:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names.update(_global_names(c))
    return tuple(sorted(names))


def lift(func):
    """(slots, modules, key) of func: see the module docstring."""
    lifter = _Lifter()
    lifter.function(func)
    if lifter.modules:
        from torch.nn.modules import module as M
        if M._global_forward_hooks or M._global_forward_pre_hooks:
            raise ValueError("owf_kernels.jvp: a global module forward "
                             f"{'hook' if M._global_forward_hooks else 'pre-hook'} is registered "
                             "(nn.modules.module.register_module_forward_hook): it would run once, at trace time, "
                             "on fake tensors; remove it before jvp")
    return lifter.slots, lifter.modules, lifter.key



@contextlib.contextmanager
def autocast_off(trace):
    """Autocast switched off for the device types `trace` was traced under: the trace holds autocast's
    casts explicitly (_autocast_casts), so the rules, eager or compiled, run without it."""
    with contextlib.ExitStack() as stack:
        for d in trace.autocast:
            stack.enter_context(torch.autocast(d, enabled=False))
        yield


# ---------------------------------------------------------------------------------------------
# The trace
# ---------------------------------------------------------------------------------------------
class Trace:
    """A traced signature: the ATen graph `gm` of f(*lifted, *primals) -> flat tensor outputs,
    `unique[i]`: which slot's tensor feeds lifted placeholder i (tied tensors feed one), the output
    structure (`spec`; non-tensor leaves kept in `consts`), how many leaves are the output proper
    (the rest: aux), and `cma` (momentum=None BatchNorms: lifted index of num_batches_tracked)."""

    def __init__(self, gm, unique, n_primals, spec, tensor_leaf, consts, n_out, cma):
        self.gm, self.unique, self.n_primals = gm, unique, n_primals
        self.spec, self.tensor_leaf, self.consts, self.n_out, self.cma = spec, tensor_leaf, consts, n_out, cma
        self.programs = {}
        self.compiled = {}                                            # jvp_compiled's functions
        self.autocast = ()                                            # the autocast device types it was traced under


def _dedupe(tensors):
    """Indices of the first occurrence of each tensor (by identity): tied weights are one input."""
    first, unique = {}, []
    for t in tensors:
        unique.append(first.setdefault(id(t), len(first)))
    return unique


def signature(func, primals, has_aux):
    """(key, slots, modules): the cache key of a call and what it lifts."""
    slots, modules, key = lift(func)
    tensors = [s.get() for s in slots]
    # the modules' training flags are in `key` (their plain attributes); requires_grad, which a
    # Python branch may read, of every lifted tensor and primal
    key = (tuple(key), tuple(_tensor_key(t) for t in tensors), tuple(_dedupe(tensors)),
           tuple([t.requires_grad for t in tensors]), tuple(_tensor_key(p) + (p.requires_grad,) for p in primals),
           bool(has_aux), torch.is_grad_enabled(), _autocast_state())
    return key, slots, modules, tensors


def get_trace(func, primals, has_aux):
    """(trace, lifted tensors): the cached trace of func for these primals, tracing it on a miss. A
    hit also checks that the key's modules are the same objects (an id can be reused after one dies);
    nn.Sequential containers, which are their children, excepted."""
    key, slots, modules, tensors = signature(func, primals, has_aux)
    modules = [m for m in modules if type(m) is not nn.Sequential]
    entry = _CACHE.get(key)
    if entry is not None and len(entry[0]) == len(modules) and all(r() is m for r, m in zip(entry[0], modules)):
        _CACHE.move_to_end(key)
        return entry[1], tensors
    trace = _trace(func, primals, has_aux, slots, modules, tensors)
    _CACHE[key] = ([weakref.ref(m) for m in modules], trace)
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return trace, tensors


def _check_params(modules, x):
    """When every floating parameter has one dtype and device and the primal another (and no autocast),
    name the first parameter: the usual mistake (a float32 module called on float64 inputs)."""
    params = [(type(m).__name__ + "." + n, p) for m in modules for n, p in m._parameters.items()
              if p is not None and p.is_floating_point()]
    kinds = {(p.dtype, p.device) for _, p in params}
    if len(kinds) == 1 and kinds != {(x.dtype, x.device)} and not torch.is_autocast_enabled(x.device.type):
        name, p = params[0]
        raise ValueError(f"{name} is {p.dtype} on {p.device}, but the primal is {x.dtype} on {x.device}: move the "
                         "module or the inputs")


def _trace(func, primals, has_aux, slots, modules, tensors):
    from torch.fx.experimental.proxy_tensor import make_fx
    _check_params(modules, primals[0])
    unique = _dedupe(tensors)
    first = {}
    for i, u in enumerate(unique):
        first.setdefault(u, tensors[i])
    lifted = [first[u] for u in range(len(first))]
    cma = _momentum_none_batch_norms(modules, slots, unique)
    box = {}

    def f(*flat):
        fakes, xs = flat[:len(lifted)], flat[len(lifted):]
        saved = [s.get() for s in slots]
        try:
            for s, u in zip(slots, unique):
                s.set(fakes[u])
            out = func(*xs)
        finally:
            for s, v in zip(slots, saved):
                s.set(v)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError("owf_kernels.jvp: has_aux=True expects func to return a pair (output, aux), got "
                                 f"{type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, tuple) else ""))
            leaves, spec = pytree.tree_flatten(out)
            box["n_out"] = len(pytree.tree_leaves(out[0]))
        else:
            leaves, spec = pytree.tree_flatten(out)
            box["n_out"] = len(leaves)
        box["spec"] = spec
        box["tensor_leaf"] = [isinstance(v, torch.Tensor) for v in leaves]
        box["consts"] = [None if isinstance(v, torch.Tensor) else v for v in leaves]
        return [v for v in leaves if isinstance(v, torch.Tensor)]

    momenta = [(m, m.momentum) for m, _ in cma]
    apply = torch.autograd.Function.__dict__["apply"]
    try:
        for k, (m, _) in enumerate(cma):
            m.momentum = -(k + 1.0)
        torch.autograd.Function.apply = classmethod(_refuse_function(apply))
        gm = make_fx(f, tracing_mode="fake", pre_dispatch=True)(*lifted, *primals)
    except _CustomFunction as e:
        raise ValueError(f"owf_kernels.jvp: {_name(func)} calls the autograd.Function {e.args[0]}: a trace would "
                         "inline its forward and drop its own jvp and backward; run this function through "
                         "torch.func.jvp, or write the Function's math in torch ops") from None
    except Exception as e:                                            # noqa: BLE001 - named and re-raised
        name = type(e).__name__
        if "DataDependent" in name or "DynamicOutputShape" in name:
            raise ValueError(f"owf_kernels.jvp: {_name(func)} branches on a tensor's value or makes a shape from "
                             f"one ({name}); a trace would bake one case in. Write it with torch.where, or take "
                             "it out of the function") from None
        if "convert all Tensors to FakeTensors" in str(e):
            raise ValueError(f"owf_kernels.jvp: {_name(func)} reads a tensor that is neither a primal, nor a parameter, "
                             "buffer or tensor attribute of a module it reaches, nor a tensor in its closure, defaults "
                             "or globals (it is in a list, or an attribute of a plain object): pass it as a primal, "
                             "close over it directly, or register it as a buffer") from None
        raise
    finally:
        torch.autograd.Function.apply = apply
        for m, mom in momenta:
            m.momentum = mom
    amp = _autocast_state()
    if amp:
        _autocast_casts(gm, amp)
    trace = Trace(gm, unique, len(primals), box["spec"], box["tensor_leaf"], box["consts"], box["n_out"],
                  [i for _, i in cma])
    trace.autocast = tuple(d for d, _ in amp)
    return trace


# ---------------------------------------------------------------------------------------------
# Autocast
# ---------------------------------------------------------------------------------------------
_AMP_DEVICES = ("cpu", "cuda")


def _autocast_state() -> tuple:
    """((device type, dtype), ...) of the autocast regions active now (part of the cache key)."""
    return tuple((d, torch.get_autocast_dtype(d)) for d in _AMP_DEVICES if torch.is_autocast_enabled(d))


def _autocast_casts(gm, amp):
    """Make the autocast of the trace's moment explicit in the graph. The pre-dispatch graph records
    each op above the Autocast dispatch key (aten.linear, not its casts), while the fake values
    (node.meta["val"]) came through it. An op autocast handles (it has a kernel for the device's
    Autocast key: linear, conv, matmul, SDPA, cat...) whose floating inputs differ in dtype from its
    output gets them cast to the output's dtype (_to_copy nodes: autocast's lower-precision, fp32
    and promote policies all cast every floating input to the output's dtype); the program then
    runs with autocast off (jvp.py), so each rule sees the dtypes autocast gives the op."""
    from .jvp_runner import _inputs
    keys = {"cpu": torch._C.DispatchKey.AutocastCPU, "cuda": torch._C.DispatchKey.AutocastCUDA}
    on = {d for d, _ in amp}
    graph = gm.graph
    for n in list(graph.nodes):
        if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
            continue
        out = n.meta.get("val")
        out = out[0] if isinstance(out, (list, tuple)) and out else out
        if (not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.device.type not in on
                or not n.target.has_kernel_for_dispatch_key(keys[out.device.type])):
            continue
        for m in dict.fromkeys(_inputs(n)):
            v = m.meta.get("val")
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != out.dtype:
                with graph.inserting_before(n):
                    c = graph.call_function(torch.ops.aten._to_copy.default, (m,), {"dtype": out.dtype})
                c.meta["val"] = v.to(out.dtype)
                n.replace_input_with(m, c)
    graph.lint()
    gm.recompile()


class _CustomFunction(Exception):
    """Raised inside the trace where func calls a custom torch.autograd.Function (its name)."""


def _refuse_function(apply):
    """Function.apply while tracing: a user's Function (not one of torch's own, such as checkpoint's,
    whose forward is the computation) stops the trace, since make_fx records only its forward's ops
    (its jvp and backward would be silently replaced by theirs)."""
    def spy(cls, *args, **kwargs):
        if not (cls.__module__ or "").startswith("torch."):
            raise _CustomFunction(cls.__qualname__)
        return apply.__get__(None, cls)(*args, **kwargs)
    return spy


def _momentum_none_batch_norms(modules, slots, unique):
    """[(module, lifted index of its num_batches_tracked)] of the train-mode BatchNorms with
    momentum=None, whose update factor 1/num_batches_tracked is read at run time."""
    out = []
    for m in modules:
        if (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is None and m.training
                and m.track_running_stats and m.num_batches_tracked is not None):
            i = next(i for i, s in enumerate(slots) if s.kind == "buffer" and s.owner is m
                     and s.name == "num_batches_tracked")
            out.append((m, unique[i]))
    return out


def _name(func):
    return type(func).__name__ if isinstance(func, nn.Module) else getattr(func, "__qualname__", repr(func))

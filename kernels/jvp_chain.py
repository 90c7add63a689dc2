"""Elementwise chains: a fusion rule of owf_kernels.jvp's runner (stage 3, beside its "mlp" and
"layer" patterns), in both tangent_grad modes.

A chain is a set of elementwise ops with tangents (CHAIN_OPS: + - * /, addcmul, neg, exp, sin, cos,
sqrt, rsqrt, square and the activations tanh, sigmoid, SiLU, ReLU, LeakyReLU; in place too, as
x.add_(b)) that ends in one value, its root, and whose other values are read only by the chain:
DiT's adaLN modulation x (1 + scale) + shift and its gated residual x + gate y, a SongUNet's
silu(addcmul(shift, x, scale + 1)) and its skip x.add_(b).add_(h) / √2. Its
inputs (leaves) are the values it reads from outside: with or without tangents, of shapes that
broadcast to the root's, [*S].

- **The reference** (`Chain.reference`, the CPU path, and the oracle): the ops' own rules
  (jvp_rules.RULES), one after another, each on the pair or the stack as it chooses: the numbers and
  the graph are exactly those of the runner without this rule.
- **The Triton kernel** where backend.use_triton says so (CUDA; the interpreter in tests):
  jvp_chain_triton generates ONE kernel per chain that reads each leaf (and its T tangents) once
  and writes y [*S] and ẏ [T, *S], the tangent formulas of jvp_rules' docstring evaluated in
  registers; the reference's chain reads and writes [1+T, *S] per op, plus one split and one cat.
  Its backward recomputes the chain by the reference, as Inductor recomputes elementwise ops.
  Under torch.compile (owf's compiled program) the reference runs: Inductor fuses the chain itself.
"""
from __future__ import annotations

import warnings

import torch

from .backend import use_triton
from .jvp_dual import is_dual, primal
from .jvp_rules import INPLACE

aten = torch.ops.aten

# aten op -> the op's name in jvp_chain_triton's table
CHAIN_OPS = {
    aten.add.Tensor: "add", aten.add.Scalar: "add", aten.sub.Tensor: "sub", aten.sub.Scalar: "sub",
    aten.rsub.Tensor: "rsub", aten.rsub.Scalar: "rsub", aten.mul.Tensor: "mul", aten.mul.Scalar: "mul",
    aten.div.Tensor: "div", aten.div.Scalar: "div", aten.addcmul.default: "addcmul", aten.neg.default: "neg",
    aten.exp.default: "exp", aten.sin.default: "sin", aten.cos.default: "cos", aten.sqrt.default: "sqrt",
    aten.rsqrt.default: "rsqrt", aten.square.default: "square", aten.tanh.default: "tanh",
    aten.sigmoid.default: "sigmoid", aten.silu.default: "silu", aten.relu.default: "relu", aten.leaky_relu.default: "leaky_relu",
}
N_TENSORS = {"add": 2, "sub": 2, "rsub": 2, "mul": 2, "div": 2, "addcmul": 3}     # the others: 1
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _number(a) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def functional(target):
    """An in-place op's out-of-place one (the runner runs it so), else the op."""
    return INPLACE.get(target, target)


def _chainable(n, dual, taken, args_of) -> bool:
    """n is an op of CHAIN_OPS with a tangent, its tensor operands of its own float dtype, its other
    arguments numbers (add/sub's alpha, addcmul's value, LeakyReLU's slope)."""
    if n.op != "call_function" or n in taken or not dual.get(n, False):
        return False
    name = CHAIN_OPS.get(functional(n.target))
    val = n.meta.get("val")
    if name is None or not isinstance(val, torch.Tensor) or val.dtype not in DTYPES:
        return False
    args, kwargs = args_of(n)
    if set(kwargs) - {"alpha", "value"} or not all(_number(v) for v in kwargs.values()):
        return False
    n_tensor = N_TENSORS.get(name, 1)
    if len(args) < n_tensor or len(args) > n_tensor + (name == "leaky_relu"):
        return False
    for a in args[:n_tensor]:
        if isinstance(a, torch.fx.Node):
            v = a.meta.get("val")
            if not isinstance(v, torch.Tensor) or v.dtype != val.dtype:
                return False
        elif not _number(a):
            return False
    return all(_number(a) for a in args[n_tensor:]) and any(isinstance(a, torch.fx.Node) for a in args[:n_tensor])


def find_chains(nodes, dual, taken, args_of):
    """[(members in graph order, leaves)]: each chain grown back from its root (the last node not yet
    in one) over the inputs all of whose readers are already members; two ops at least."""
    index = {n: i for i, n in enumerate(nodes)}
    ok = {n for n in nodes if _chainable(n, dual, taken, args_of)}
    owner, chains = set(), []
    for root in reversed(nodes):
        if root not in ok or root in owner:
            continue
        members, grew = {root}, True
        while grew:
            grew = False
            for m in list(members):
                for a in m.all_input_nodes:
                    if a in ok and a not in members and a not in owner and all(u in members for u in a.users):
                        members.add(a)
                        grew = True
        if len(members) < 2:
            continue
        owner |= members
        ordered = sorted(members, key=index.get)
        leaves = []
        for m in ordered:
            for a in m.all_input_nodes:
                if a not in members and a not in leaves:
                    leaves.append(a)
        chains.append((ordered, leaves))
    return chains


class Chain:
    """One chain's step: `ops` [(aten op, out of place; its rule fn, args, kwargs)] with operands
    ("L", i) a leaf, ("M", k) an earlier member, or a number; `spec` the same for jvp_chain_triton:
    (name, operands, alpha/slope). rule(op) -> the runner's step fn of that op."""

    def __init__(self, members, leaves, rule, args_of):
        slot = {n: ("L", i) for i, n in enumerate(leaves)}
        slot.update({n: ("M", k) for k, n in enumerate(members)})
        self.ops, spec = [], []
        for n in members:
            args, kwargs = args_of(n)
            args = tuple(slot[a] if isinstance(a, torch.fx.Node) else a for a in args)
            op = functional(n.target)
            self.ops.append((op, rule(op), args, kwargs))
            name = CHAIN_OPS[op]
            n_tensor = N_TENSORS.get(name, 1)
            param = kwargs.get("alpha", 1) if name in ("add", "sub", "rsub") else kwargs.get("value", 1) \
                if name == "addcmul" else (args[1] if len(args) > 1 else 0.01) if name == "leaky_relu" else None
            spec.append((name, args[:n_tensor], param))
        self.spec = tuple(spec)
        self.triton_ok = True
        self.names = "+".join(s[0] for s in spec)

    def _run(self, leaves, call):
        vals = []

        def get(a):
            if type(a) is tuple:
                return leaves[a[1]] if a[0] == "L" else vals[a[1]]
            return a
        for op, fn, args, kwargs in self.ops:
            vals.append(call(op, fn, [get(a) for a in args], kwargs))
        return vals[-1]

    def reference(self, ctx, leaves):
        """The chain by its ops' rules (the runner's numbers without this fusion rule)."""
        return self._run(leaves, lambda op, fn, a, k: fn(ctx, *a, **k))

    def primal(self, leaves):
        """y alone, by the aten ops themselves (the plain forward's graph)."""
        return self._run(leaves, lambda op, fn, a, k: op(*[primal(x) for x in a], **k))

    def step(self):
        """The runner's step: the Triton kernel where it applies, else the reference. A kernel that fails
        to compile or launch (none has run on a GPU yet: docs/benchmarks.md) warns once, naming the chain
        and the error, and this chain takes the reference from then on."""
        def run(ctx, *leaves):
            if self.triton_ok and _triton_applies(leaves):
                from .jvp_chain_triton import chain_triton
                try:
                    return chain_triton(self, ctx, leaves)
                except Exception as e:                              # noqa: BLE001 (named in the warning)
                    self.triton_ok = False
                    warnings.warn(f"owf_kernels.jvp: the Triton kernel of the elementwise chain {self.names} failed "
                                  f"({type(e).__name__}: {str(e)[:300]}); the chain runs on the torch path from now "
                                  "on: the same numbers, without the fusion", RuntimeWarning, stacklevel=2)
            return self.reference(ctx, leaves)
        return run


def _triton_applies(leaves) -> bool:
    tensors = [p for p in map(primal, leaves) if isinstance(p, torch.Tensor)]
    if not tensors or torch.compiler.is_compiling() or not use_triton(tensors[0]):
        return False
    dt, dev = tensors[0].dtype, tensors[0].device
    for a in leaves:
        for t in (a.P() if is_dual(a) else (a,)):
            if isinstance(t, torch.Tensor) and (t.dtype != dt or t.device != dev):
                return False
    return dt in DTYPES


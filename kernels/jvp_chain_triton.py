"""The Triton kernel of an elementwise chain (jvp_chain.py: what a chain is, and its torch reference,
the oracle): ONE generated kernel per chain signature.

Shapes: leaves x_i broadcast to the root's [*S] (rank R, N elements); a leaf with tangents has
ẋ_i [T, *S'] (S' broadcasting to S); the outputs y [*S] and ẏ [T, *S], contiguous (in stacked mode
the two slots of one H [1+T, *S]). Each program owns BLOCK of the N elements: it splits the flat
index into R coordinates once, loads each leaf through its own (broadcast, possibly zero) strides,
evaluates the chain's primal and, per op, its tangent coefficient (below), stores y, then loops
over the T tangents: loads each ẋ_i, evaluates the chain's tangent (linear in the ẋ_i, with the
coefficients held in registers) and stores ẏ_t. Reads (1+T)·N per dual leaf and N per constant one,
writes (1+T)·N; the reference reads and writes (1+T)·N per op.

Per op (y = op(a[, b]), the formulas of jvp_rules' docstring; g the coefficient of ȧ kept from the
primal pass):
    a + α b: ȧ + α ḃ       a - α b: ȧ - α ḃ       rsub (b - α a): ḃ - α ȧ       a b: ȧ b + a ḃ
    addcmul (s + v a b): ṡ + v (ȧ b + a ḃ)        a / b: (ȧ - y ḃ) / b        -a: -ȧ
    exp: g = y   sin: g = cos a   cos: g = -sin a   sqrt: g = ½ / y
    rsqrt: g = -½ y³   square: g = 2a   tanh, sigmoid, SiLU, ReLU, LeakyReLU: g = σ'(a), with σ
    by jvp_epilogue_triton._act (tanh from the sigmoid: no libdevice in the interpreter)
Arithmetic in float32 for bf16/fp16 (rounded once, at the store), else in the tensors' dtype.
Numbers (operands, α, the slope) are float64 arguments, cast to the compute dtype in the kernel
(jvp_epilogue_triton._scalar: a Python float would launch as fp32).

Backward (`_ChainFn`): the chain again by its reference under autograd, and torch.autograd.grad:
with tangent_grad through y and ẏ to every leaf and tangent; without it, ẏ is not differentiable
and the primal alone is recomputed by the aten ops (the plain forward's graph). Saved: the leaves (without
tangent_grad, their primals). Under create_graph the recompute starts from the leaves themselves, so a
gradient of the gradient (a gradient penalty) goes through the chain's torch path.

The generated source goes to a file (Triton's jit reads a kernel's source), one per chain
signature (ops, which leaves have tangents, rank, compute dtype), under the temp directory.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile

import torch
import triton
import triton.language as tl

from .jvp_dual import Dual, is_dual

BLOCK = 1024
_KERNELS: dict = {}
# activations by jvp_epilogue_triton._act's code
ACT_CODE = {"relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4, "silu": 6}
# unary ops: (primal, coefficient g of ȧ), a the operand, y the result
UNARY = {
    "exp": ("tl.exp({a})", "{y}"),
    "sin": ("tl.sin({a})", "tl.cos({a})"),
    "cos": ("tl.cos({a})", "-tl.sin({a})"),
    "sqrt": ("{sqrt}({a})", "0.5 / {y}"),
    "rsqrt": ("1.0 / {sqrt}({a})", "-0.5 * {y} * {y} * {y}"),
    "square": ("{a} * {a}", "2.0 * {a}"),
}


def _source(spec, dual_leaves, R, cdt):
    """(the kernel's source, its numbers c_j) for a chain spec ((name, operands, param) per op), which
    leaves carry tangents, the rank R of S, and the compute dtype's name ("float32" / "float64")."""
    L = len(dual_leaves)
    consts = []

    def const(v):
        consts.append(float(v))            # an int (alpha=2) launches as the float64 argument too
        return f"_scalar(c{len(consts) - 1}, CDT)"

    args = ["YP", "YT"]
    for i in range(L):
        args += [f"X{i}"] + ([f"DX{i}"] if dual_leaves[i] else [])
    args += ["N", "T"] + [f"D{d}" for d in range(1, R)]
    for i in range(L):
        args += [f"s{i}_{d}" for d in range(R)]
        if dual_leaves[i]:
            args += [f"ts{i}_lead"] + [f"ts{i}_{d}" for d in range(R)]
    body = ["offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)", "mask = offs < N"]
    if R:
        body.append("rem = offs")
        for d in range(R - 1, 0, -1):
            body += [f"i{d} = rem % D{d}", f"rem = rem // D{d}"]
        body.append("i0 = rem")

    def off(prefix):
        return " + ".join(f"i{d} * {prefix}_{d}" for d in range(R)) if R else "offs * 0"
    for i in range(L):
        body.append(f"x{i} = tl.load(X{i} + {off(f's{i}')}, mask=mask, other=1.0).to(CDT)")
        if dual_leaves[i]:
            body.append(f"ot{i} = {off(f'ts{i}')}")
    def product(a, da, b, db):
        """ȧ b + a ḃ, the terms whose tangent exists."""
        return " + ".join(([f"{da} * {b}"] if da else []) + ([f"{a} * {db}"] if db else []))

    # the primal pass: m_k, and g_k where the tangent needs it. Every op has a tangent (a member of a
    # chain has one by construction), so at least one of its operands' tangents exists.
    prim = {("L", i): f"x{i}" for i in range(L)}
    has_t = {("L", i): dual_leaves[i] for i in range(L)}
    tan_lines = []
    for k, (name, ops, param) in enumerate(spec):
        opr = [prim[o] if isinstance(o, tuple) else const(o) for o in ops]
        dts = [(f"d{o[1]}" if o[0] == "L" else f"dm{o[1]}") if isinstance(o, tuple) and has_t[o] else None
               for o in ops]
        y = f"m{k}"
        if name in ("add", "sub", "rsub"):
            a, b = opr if name != "rsub" else opr[::-1]
            da, db = dts if name != "rsub" else dts[::-1]
            sign = "+" if name == "add" else "-"
            alpha = "" if param == 1 else f"{const(param)} * "
            body.append(f"{y} = {a} {sign} {alpha}{b}")
            tb = f"{alpha}{db}" if db else None
            tan = f"{da} {sign} {tb}" if da and tb else da if da else tb if sign == "+" else f"-{tb}"
        elif name == "mul":
            a, b = opr
            body.append(f"{y} = {a} * {b}")
            tan = product(a, dts[0], b, dts[1])
        elif name == "addcmul":
            s_, a, b = opr
            ds, da, db = dts
            v = "" if param == 1 else f"{const(param)} * "
            body.append(f"{y} = {s_} + {v}{a} * {b}")
            prod = product(a, da, b, db)
            tan = " + ".join(([ds] if ds else []) + ([f"{v}({prod})"] if prod else []))
        elif name == "div":
            a, b = opr
            da, db = dts
            body.append(f"{y} = {a} / {b}")
            tan = f"({da} - {y} * {db}) / {b}" if da and db else f"{da} / {b}" if da else f"-({y} * {db}) / {b}"
        elif name == "neg":
            body.append(f"{y} = -{opr[0]}")
            tan = f"-{dts[0]}"
        elif name in UNARY:
            f, g = UNARY[name]
            # IEEE-rounded sqrt: tl.sqrt is the fast one in float32 (sqrt_rn takes float32 only)
            body.append(f"{y} = {f.format(a=opr[0], sqrt='tl.sqrt_rn' if cdt == 'float32' else 'tl.sqrt')}")
            body.append(f"g{k} = {g.format(a=opr[0], y=y)}")
            tan = f"g{k} * {dts[0]}"
        else:
            p1 = const(param) if name == "leaky_relu" else "0.0"
            body.append(f"{y}, g{k}, _ = _act({opr[0]}, {ACT_CODE[name]}, {p1}, 0.0)")
            tan = f"g{k} * {dts[0]}"
        prim[("M", k)] = y
        has_t[("M", k)] = True
        tan_lines.append(f"dm{k} = {tan}")
    last = len(spec) - 1
    body.append(f"tl.store(YP + offs, m{last}.to(YP.dtype.element_ty), mask=mask)")
    body.append("oy = offs")
    body.append("for t in range(T):")
    loop = [f"d{i} = tl.load(DX{i} + ot{i}, mask=mask, other=0.0).to(CDT)" for i in range(L) if dual_leaves[i]]
    loop += tan_lines
    loop.append(f"tl.store(YT + oy, dm{last}.to(YT.dtype.element_ty), mask=mask)")
    loop.append("oy += N")
    loop += [f"ot{i} += ts{i}_lead" for i in range(L) if dual_leaves[i]]
    body += ["    " + ln for ln in loop]
    args += [f"c{j}: tl.float64" for j in range(len(consts))] + ["CDT: tl.constexpr", "BLOCK: tl.constexpr"]
    head = ["import triton", "import triton.language as tl",
            "from owf_kernels.jvp_epilogue_triton import _act, _scalar", "", "",
            "@triton.jit", f"def chain_kernel({', '.join(args)}):"]
    return "\n".join(head + ["    " + ln for ln in body]) + "\n", consts


def _kernel(spec, dual_leaves, R, cdt):
    key = (spec, dual_leaves, R, cdt)
    hit = _KERNELS.get(key)
    if hit is None:
        src, consts = _source(spec, dual_leaves, R, cdt)
        digest = hashlib.sha1(src.encode()).hexdigest()[:20]
        user = os.getuid() if hasattr(os, "getuid") else 0
        folder = os.path.join(tempfile.gettempdir(), f"owf_kernels_chains_{user}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"chain_{digest}.py")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(src)
            os.replace(tmp, path)                  # atomic: processes (DDP ranks) may race
        mod_spec = importlib.util.spec_from_file_location(f"owf_chain_{digest}", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        hit = _KERNELS[key] = (mod.chain_kernel, consts)
    return hit


def _compute_dtype(dt):
    return "float64" if dt == torch.float64 else "float32"


def _tangent_view(t, T, S):
    """ẋ [T, *s] -> a view [T, *S] (unit dims in front of s, then broadcast)."""
    while t.dim() < len(S) + 1:
        t = t.unsqueeze(1)
    return t.expand(T, *S)


def _launch(chain, layout, tensors, T, stack):
    """Run the kernel: (H [1+T, *S]) in stacked mode, else (y, ẏ)."""
    leaves, it = [], iter(tensors)
    for kind in layout:
        leaves.append((next(it), next(it)) if kind else (next(it), None))
    S = torch.broadcast_shapes(*[p.shape for p, _ in leaves])
    R, N = len(S), 1
    for s in S:
        N *= s
    first = leaves[0][0]
    if stack:
        H = torch.empty((1 + T, *S), dtype=first.dtype, device=first.device)
        y, yd = H[0], H[1:]
    else:
        y = torch.empty(S, dtype=first.dtype, device=first.device)
        yd = torch.empty((T, *S), dtype=first.dtype, device=first.device)
    cdt = _compute_dtype(first.dtype)
    kernel, consts = _kernel(chain.spec, tuple(layout), R, cdt)
    ptrs, strides = [], []
    for p, t in leaves:
        pv = p.expand(S)
        ptrs.append(pv)
        strides += list(pv.stride())
        if t is not None:
            tv = _tangent_view(t, T, S)
            ptrs.append(tv)
            strides += list(tv.stride())
    if N:
        kernel[(triton.cdiv(N, BLOCK),)](y, yd, *ptrs, N, T, *S[1:], *strides, *consts,
                                         CDT=getattr(tl, cdt), BLOCK=BLOCK)
    return (H,) if stack else (y, yd)


class _ChainFn(torch.autograd.Function):
    """(chain, ctx, layout, *leaf tensors) -> H (stacked) or (y, ẏ); module docstring."""

    @staticmethod
    def forward(fctx, chain, ctx, layout, *tensors):
        out = _launch(chain, layout, tensors, ctx.T, ctx.stack)
        fctx.chain, fctx.ctx, fctx.layout = chain, ctx, layout
        if ctx.stack:
            fctx.save_for_backward(*tensors)
            return out[0]
        # without tangent_grad the backward recomputes y alone: the tangents are not kept
        tangent = []
        for dual in layout:
            tangent += [False, True] if dual else [False]
        fctx.save_for_backward(*[None if is_t else x for x, is_t in zip(tensors, tangent)])
        fctx.mark_non_differentiable(out[1])
        return out

    @staticmethod
    def backward(fctx, *grads):
        # create_graph (a gradient of this gradient): the chain is recomputed from the leaves themselves,
        # so that the gradient's own graph reaches them; else from detached copies
        create = torch.is_grad_enabled()
        ctx, layout = fctx.ctx, fctx.layout
        need = fctx.needs_input_grad[3:]
        inputs = [x if x is None or create else x.detach().requires_grad_(n)
                  for x, n in zip(fctx.saved_tensors, need)]
        leaves, it = [], iter(inputs)
        for dual in layout:
            leaves.append(Dual(p=next(it), t=next(it)) if dual else next(it))
        with torch.enable_grad():
            if ctx.stack:
                out = fctx.chain.reference(ctx, leaves)
                y, yd = out.P()
                G = grads[0]
                outs, gs = [y.expand(G.shape[1:]), yd.expand(G[1:].shape)], [G[0], G[1:]]
            else:
                y = fctx.chain.primal(leaves)
                outs, gs = [y.expand(grads[0].shape)], [grads[0]]
        want = [x for x, n in zip(inputs, need) if x is not None and n]
        got = iter(torch.autograd.grad(outs, want, gs, allow_unused=True, create_graph=create) if want else ())
        return (None, None, None) + tuple(next(got) if x is not None and n else None
                                          for x, n in zip(inputs, need))


def chain_triton(chain, ctx, leaves):
    """The chain's step on the Triton kernel: a Dual (stacked in ctx.stack mode, else a pair)."""
    layout, tensors = [], []
    for a in leaves:
        if is_dual(a):
            p, t = a.P()
            layout.append(True)
            tensors += [p, t]
        else:
            layout.append(False)
            tensors.append(a)
    out = _ChainFn.apply(chain, ctx, tuple(layout), *tensors)
    if ctx.stack:
        return Dual(H=out)
    return Dual(p=out[0], t=out[1])

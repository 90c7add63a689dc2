"""Which implementation a call runs: the Triton kernel or the pure-PyTorch reference.

`OWF_KERNELS_BACKEND` = auto | triton | torch (read at every call, so tests can flip it):

- auto:   Triton for CUDA tensors, the torch reference for CPU tensors. If triton cannot be
          imported, warn once and run the torch reference: never a silent fallback.
- triton: always Triton. CPU tensors need `TRITON_INTERPRET=1` set before triton is imported;
          without it this is an error that says so.
- torch:  always the torch reference.

The kernels built on `tl.dot` (linear_jvp, mlp_jvp, sdpa_jvp) take float32, bfloat16 and float16:
Triton's dot has no float64 on NVIDIA GPUs (sm_90: the float64 tile cannot join the fp32 accumulator,
a compile error). Under auto a float64 tensor runs their torch reference (cuBLAS in float64); under
triton their Triton path refuses it and names the dtype.

Nothing here imports triton at module import time: `import owf_kernels` compiles nothing.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

BACKENDS = ("auto", "triton", "torch")
_warned = False


def backend_name() -> str:
    name = os.environ.get("OWF_KERNELS_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"OWF_KERNELS_BACKEND={name!r} is not one of {BACKENDS}")
    return name


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


DOT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def use_triton_dot(t: torch.Tensor) -> bool:
    """use_triton for the kernels built on tl.dot: under auto, a float64 tensor takes the reference."""
    if backend_name() == "auto" and isinstance(t, torch.Tensor) and t.dtype not in DOT_DTYPES:
        return False
    return use_triton(t)


def check_dot_dtype(t: torch.Tensor) -> None:
    """The Triton paths of the tl.dot kernels: refuse a dtype they do not take, naming it."""
    if isinstance(t, torch.Tensor) and t.dtype not in DOT_DTYPES:
        raise ValueError(f"dtype {t.dtype} is not supported by the Triton kernel (float32, bfloat16, "
                         f"float16); use OWF_KERNELS_BACKEND=torch (or auto) for it")


def use_triton(t: torch.Tensor) -> bool:
    """The one decision each public op makes: run the Triton kernel on tensor `t`'s device?"""
    global _warned
    if not isinstance(t, torch.Tensor):
        return False          # the reference's input checks then name the bad argument
    name = backend_name()
    if name == "torch":
        return False
    if name == "triton":
        if not triton_available():
            raise RuntimeError("OWF_KERNELS_BACKEND=triton but triton cannot be imported")
        if t.device.type == "cpu" and not interpreting():
            raise RuntimeError(
                "OWF_KERNELS_BACKEND=triton on CPU tensors runs only in Triton's interpreter: "
                "set TRITON_INTERPRET=1 before triton is imported, or use OWF_KERNELS_BACKEND=torch")
        return True
    # auto
    if t.device.type != "cuda":
        return False
    if not triton_available():
        if not _warned:
            warnings.warn("owf_kernels: triton cannot be imported; CUDA tensors run on the "
                          "pure-PyTorch reference path (slower)", RuntimeWarning, stacklevel=3)
            _warned = True
        return False
    return True


def first_order(backward):
    """For the hand-written backward of an autograd.Function (kernels that build no graph): under
    create_graph=True, differentiating its gradients again raises.

    torch's once_differentiable marks the gradients only when the incoming gradient itself requires
    grad, and hangs its error node on detached copies. For a loss linear in the outputs (y.sum() +
    ẏ.sum()) the gradient came back with no graph, and even when marked, torch.autograd.grad(..., x)
    never reaches the error node (no path from it to x): a second derivative (a gradient penalty)
    silently missed every term through the kernel (linear_jvp's torch path: -4.6 where autograd gives
    -1240, 2026-12-06). Here the marked gradients hang on the saved tensors that require grad (a zero
    times one element of each), so any second derivative that reaches the inputs meets the error."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            out = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return out
        outs = out if isinstance(out, tuple) else (out,)
        anchor = sum(t.reshape(-1)[:1].sum() * 0 for t in ctx.saved_tensors
                     if isinstance(t, torch.Tensor) and t.requires_grad and t.numel())
        err = torch._C._functions.DelayedError(
            b"owf_kernels: a second derivative through a kernel whose backward is hand-written (it builds no "
            b"graph); use OWF_KERNELS_BACKEND=torch where the op has a differentiable torch path, or detach",
            len(outs))

        def marked(g):
            if g is None:
                return g
            g = g.detach()
            if isinstance(anchor, torch.Tensor):
                return g + anchor.to(g.dtype)
            return g.requires_grad_(True)
        return err(*[marked(g) for g in outs])
    return wrapper

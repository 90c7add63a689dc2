"""Which implementation a call runs: the Triton kernel or the pure-PyTorch reference.

`OWF_KERNELS_BACKEND` = auto | triton | torch (read at every call, so tests can flip it):

- auto:   Triton for CUDA tensors, the torch reference for CPU tensors. If triton cannot be
          imported, warn once and run the torch reference: never a silent fallback.
- triton: always Triton. CPU tensors need `TRITON_INTERPRET=1` set before triton is imported;
          without it this is an error that says so.
- torch:  always the torch reference.

Nothing here imports triton at module import time: `import owf_kernels` compiles nothing.
"""
from __future__ import annotations

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

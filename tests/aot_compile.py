"""Compile owf_kernels' Triton layer-epilogue kernels for an sm_90 GPU (H100/H200) on a machine
without one: Triton's frontend, LLVM and ptxas, no launch. Run with TRITON_INTERPRET unset (the
decorator reads it at import). Prints the number of kernels compiled; raises on the first failure.

    python tests/aot_compile.py
"""
import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("aot_compile.py: unset TRITON_INTERPRET (kernels decorated in the interpreter do not compile)")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import owf_kernels.jvp_epilogue_triton as E  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
INTS = ("R", "C", "S", "T")
SCALARS = {"RS": "i64", "p1": "fp64", "p2": "fp64"}      # p1, p2: float64 by annotation


def signature(kernel, dtype: str, cdt):
    """Triton's signature of an epilogue kernel: the tensors' pointers (A, H, G, GA in `dtype`;
    coefficients and partials in the compute dtype), i32 sizes, an i64 slot size, fp64 scalars (as
    the kernels annotate them)."""
    cptr = "*fp64" if cdt == tl.float64 else "*fp32"
    sig = {}
    for name in kernel.arg_names:
        if name in ("A_ptr", "H_ptr", "G_ptr", "GA_ptr"):
            sig[name] = dtype
        elif name.endswith("_ptr"):
            sig[name] = cptr
        elif name in INTS:
            sig[name] = "i32"
        elif name in SCALARS:
            sig[name] = SCALARS[name]
        else:
            sig[name] = "constexpr"
    return sig


def main():
    for kernel in (E._epilogue_fwd_kernel, E._epilogue_bwd_kernel):     # what a launch passes p1, p2 as
        kinds = {p.name: p.annotation_type for p in kernel.params if p.name in ("p1", "p2")}
        if kinds != {"p1": "fp64", "p2": "fp64"}:
            raise TypeError(f"{kernel.fn.__name__}: p1, p2 launch as {kinds}, not fp64: a float64 network "
                            f"would get fp32 activation parameters")
    cases = [("*fp32", tl.float32, act) for act in range(len(E.ACT_CODES))]
    cases += [("*bf16", tl.float32, 6), ("*fp64", tl.float64, 2)]
    n = 0
    for (dtype, cdt, act), S in zip(cases, [1, 49, 196, 784] * len(cases)):   # the tiles the GPU launches use
        block_r, block_s = E._blocks(S)
        for has_k in (False, True):
            for kernel in (E._epilogue_fwd_kernel, E._epilogue_bwd_kernel):
                consts = {"ACT": act, "HAS_K": has_k, "cdt": cdt, "BLOCK_R": block_r, "BLOCK_S": block_s}
                triton.compile(ASTSource(fn=kernel, signature=signature(kernel, dtype, cdt), constexprs=consts),
                               target=TARGET)
                n += 1
    print(n)


if __name__ == "__main__":
    main()

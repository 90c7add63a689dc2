"""Keep freed CPU memory in the process instead of returning it to the OS (glibc only).

Why: on CPU every op returns a fresh tensor. glibc serves allocations above its mmap threshold
(128 KiB, raised adaptively up to the largest chunk freed so far) with fresh mmap'd pages, and trims
the top of the heap back to the OS once it holds more than twice that threshold free. Either way
the next allocation of a [3, 512, 256] fp32 tensor (1.5 MiB, 384 pages) page-faults on every page
it touches: about 0.4 ms, as long as the GEMM that writes it. Measured on the 2D generator step
(B = 512, width 256, T = 2; scratch timing of each matmul in place): the [1536, 2] x [2, 256] GEMM
took 463 us in the step against 32 us alone; 99 us with this setting.

`keep_freed_memory()` sets, through mallopt(3):
    M_MMAP_THRESHOLD = 32 MiB (glibc's maximum): tensors up to 32 MiB come from the heap;
    M_TRIM_THRESHOLD = 1 GiB and M_TOP_PAD = 64 MiB: freed heap memory is kept for reuse.
This is process-wide and what PyTorch's CPU tuning guide gets from jemalloc/tcmalloc by LD_PRELOAD;
the cost is that the process's resident size does not shrink after a peak. The environment
variables MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_ do the same before
start-up. Nothing in owf_kernels calls this on import: applications (owf.train, the benchmarks)
opt in.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3       # <malloc.h>
MMAP_THRESHOLD = 32 << 20        # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc; larger is refused
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20

_applied = None


def keep_freed_memory() -> bool:
    """Apply the settings above once; True when glibc accepted all three, False where there is no
    glibc mallopt (macOS, Windows, musl): then nothing changes."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                   (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                                   (M_TOP_PAD, TOP_PAD)))
    return _applied

"""Benchmarks: full sizes under `pytest benchmarks --benchmark-enable`; tiny sizes (a smoke pass that
keeps them from rotting) under the default `--benchmark-disable` that pytest.ini sets for CI."""
import os
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402

from owf_kernels import keep_freed_memory  # noqa: E402

keep_freed_memory()      # for every provider alike: fresh mmap'd pages would cost each of them page faults

ROUND_BUDGET_S = 3.0


@pytest.fixture
def run(benchmark):
    """benchmark(fn) with a warm-up call outside the timing (compiles, caches), then a check that
    the provider ran."""
    def go(fn, extra=None, **kw):
        t = time.perf_counter()
        fn()
        t = time.perf_counter() - t
        if extra:
            benchmark.extra_info.update(extra)
        if benchmark.disabled:
            return benchmark(fn)
        # about ROUND_BUDGET_S of timed calls per benchmark: 20 rounds for fast ops, at least 3 for slow ones
        rounds = kw.get("rounds", max(3, min(20, int(ROUND_BUDGET_S / max(t, 1e-9)))))
        return benchmark.pedantic(fn, rounds=rounds, iterations=kw.get("iterations", 1),
                                  warmup_rounds=1 if rounds < 20 else 2)
    return go


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""Benchmarks: full sizes under `pytest benchmarks --benchmark-enable`; tiny sizes (a smoke pass that
keeps them from rotting) under the default `--benchmark-disable` that pytest.ini sets for CI."""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def run(benchmark):
    """benchmark(fn) with a warm-up call outside the timing (compiles, caches), then a check that
    the provider ran."""
    def go(fn, extra=None, **kw):
        fn()
        if extra:
            benchmark.extra_info.update(extra)
        return benchmark.pedantic(fn, rounds=kw.get("rounds", 20), iterations=kw.get("iterations", 1),
                                  warmup_rounds=2) if not benchmark.disabled else benchmark(fn)
    return go


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

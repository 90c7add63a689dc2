"""Shared by the benchmark files (importable; conftest.py holds the fixtures)."""
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def smoke(config) -> bool:
    """Tiny sizes: the default `--benchmark-disable` of pytest.ini (CI's smoke pass), unless
    `--benchmark-enable` overrides it."""
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")

"""Test setup: Triton runs in its interpreter on CPU, and every test is seeded."""
import os

# Must happen before anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from support import BACKENDS  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("OWF_KERNELS_BACKEND", request.param)
    return request.param


@pytest.fixture
def fashion_root(tmp_path, monkeypatch):
    """A Fashion-MNIST-format folder of toy images (support.write_fashion_mnist), and a cache
    folder of the test's own (trained classifiers, unpacked files)."""
    from support import write_fashion_mnist
    monkeypatch.setenv("OWF_CACHE", str(tmp_path / "cache"))
    return write_fashion_mnist(tmp_path / "fm")

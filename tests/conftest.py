"""Test setup: Triton runs in its interpreter on CPU, and every test is seeded."""
import os

# Must happen before anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# On a GPU, cuDNN's fp32 convolutions default to TF32 (10 mantissa bits); the tests hold fp32 to float64
# references, so they run in full fp32 (gpu_check measured 2.0e-2 against 1e-5 with it on, H200 2026-12-04)
torch.backends.cudnn.allow_tf32 = False

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


@pytest.fixture(scope="session")
def trained_ring(tmp_path_factory):
    """A ring model trained for 1,500 steps, shared by the test modules: copy it (copy_run) before
    writing into it."""
    from owf.config import Config
    from owf.train import train
    out = tmp_path_factory.mktemp("trained") / "ring"
    train(Config(steps=1500, lr_d=1e-3, lr_g=3e-3, log_every=500, sample_every=10 ** 6, ckpt_every=10 ** 6,
                 device="cpu", out=str(out)), progress=False)
    return out

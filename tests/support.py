"""Constants shared by the tests (importable; conftest.py holds the fixtures)."""
import torch


def triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# Backends each kernel test runs under: the torch reference always; Triton when it imports
# (through the interpreter on CPU, natively on a GPU).
BACKENDS = ["torch"] + (["triton"] if triton_usable() else [])
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ---- toy image data in the formats the loaders read (owf.images)
import gzip  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402

CLASSES = 10


def write_idx(path, array, gz=True):
    """An IDX file (the MNIST format): magic 0x08 (ubyte), dims, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if gz else open
    with opener(str(path) + (".gz" if gz else ""), "wb") as f:
        f.write(header + array.tobytes())


def toy_images(n, size=28, channels=1, seed=0):
    """Labelled images a classifier learns at once: class k is a bright bar at row band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    x = rng.integers(0, 40, (n, channels, size, size))
    band = size // CLASSES
    for i, k in enumerate(labels):
        x[i, :, k * band:(k + 1) * band + 1, 2:-2] = 200 + rng.integers(0, 55)
    return x.astype(np.uint8), labels.astype(np.uint8)


def write_fashion_mnist(root, n_train=600, n_test=200):
    """A Fashion-MNIST-format folder (the Debian package's .gz IDX files) of toy images."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        x, y = toy_images(n, seed=1 if split == "train" else 2)
        write_idx(root / f"{split}-images-idx3-ubyte", x[:, 0])
        write_idx(root / f"{split}-labels-idx1-ubyte", y)
    return root

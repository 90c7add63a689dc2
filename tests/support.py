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

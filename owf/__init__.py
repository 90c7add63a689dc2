"""owf: One-way Flows, adversarial likelihood estimation with an energy discriminator and a
generator whose density at its own samples is known (Ben-Dov et al.).

    python -m owf.train                  # train on 2D data (every option: owf.config.Config)
    python -m owf.evaluate RUN_DIR       # log ζ, test NLL, and the paper's density figures
    model = owf.load(RUN_DIR)            # sample, energy, estimate_log_zeta, log_prob
"""
__version__ = "0.1.0"


def __getattr__(name):          # keep `import owf` light: load pulls in the model on first use
    if name == "load":
        from .density import load
        return load
    raise AttributeError(f"module 'owf' has no attribute {name!r}")

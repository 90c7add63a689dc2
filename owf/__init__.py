"""owf: One-way Flows, adversarial likelihood estimation with an energy discriminator and a
generator whose density at its own samples is known (Ben-Dov et al.).

    python -m owf.train          # train on 2D data (see owf.config.Config for every option)
"""
__version__ = "0.1.0"

from setuptools import setup

setup(
    name="owf",
    version="0.1.0",
    description="One-way Flows: adversarial likelihood estimation with an energy discriminator "
                "and a generator of known density, with fused forward+JVP Triton kernels",
    python_requires=">=3.9",
    packages=["owf", "owf.experiments", "owf_kernels"],
    package_dir={"owf": "owf", "owf_kernels": "kernels"},
    install_requires=[
        "torch>=2.4",       # Adam(fused=True) on CPU tensors, which owf.train uses
        "numpy",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        # triton ships with the CUDA builds of torch; name it for CPU-only installs too.
        "triton": ["triton>=3.0"],
        "dev": ["pytest", "pytest-benchmark", "pytest-timeout", "triton>=3.0"],
    },
)

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
        "torchvision",      # image data sets and grids
        "torchmetrics",     # the Fréchet distance (classifier and Inception FID) and the AUC
        "numpy",
        "matplotlib",
        "pillow",
        "tqdm",
    ],
    extras_require={
        # triton ships with the CUDA builds of torch; name it for CPU-only installs too.
        "triton": ["triton>=3.0"],
        "fid": ["torch-fidelity"],          # the Inception-v3 of the standard FID (--fid-weights)
        "dev": ["pytest", "pytest-benchmark", "pytest-timeout", "triton>=3.0", "torch-fidelity"],
    },
)

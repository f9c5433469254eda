"""Install diffusion-nnunet: `pip install -e .[test]` (see the Makefile for the torch pair)."""
from setuptools import find_packages, setup

setup(
    name="diffusion-nnunet",
    version="0.1.0",
    description="Self-configuring diffusion-based medical image segmentation on top of nnU-Net v2",
    python_requires=">=3.10",
    packages=find_packages(include=["dnnunet_core", "dnnunet_core.*", "diffusion_nnunet", "diffusion_nnunet.*",
                                    "planning", "planning.*"]),
    package_data={"diffusion_nnunet": ["nnunet_ext/*.py"]},
    install_requires=[
        # nnunetv2's trainer/planner/predictor API changes between minor releases: pin the tested one.
        "nnunetv2>=2.8.1,<2.9",
        # torch and torchvision must be a matching pair (see docs/install.md); the Makefile pins them.
        "torch>=2.4",
        "torchvision",
        "SimpleITK>=2.3",
        "numpy",
        "tqdm",
        "matplotlib",
        "monai>=1.4,<1.7",  # surface distances (HD95, NSD)
        "nilearn>=0.10",  # ships the MNI152 template used by mni-tissue2d
        "filelock>=4.3",  # the fold lock: SoftFileLock's PID + host + start-time stale detection (also torch's)
    ],
    extras_require={"test": ["pytest>=8", "pytest-timeout", "medpy>=0.5", "ruff>=0.17,<0.18"]},
    entry_points={"console_scripts": ["dnnunet=diffusion_nnunet.cli.main:main"]},
)

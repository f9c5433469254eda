"""diffusion-nnunet: diffusion segmentation heads and a CPU-aware pipeline on top of nnU-Net v2.

Importing this package sets defaults for nnU-Net's folder variables (see `paths`) before
nnunetv2 is imported anywhere, so that every command works without setup.
"""
from diffusion_nnunet import paths as _paths

_paths.set_default_environment()

__version__ = "0.1.0"

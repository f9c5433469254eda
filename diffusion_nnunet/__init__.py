"""diffusion-nnunet: diffusion segmentation heads and a CPU-aware pipeline on top of nnU-Net v2.

Importing this package imports the core first (`dnnunet_core`), which sets defaults for
nnU-Net's folder variables before nnunetv2 is imported anywhere.
"""
import dnnunet_core  # noqa: F401  (sets nnU-Net's folder defaults before nnunetv2 is imported)

__version__ = "0.1.0"

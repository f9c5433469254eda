"""The core below `planning` and `diffusion_nnunet`: errors, nnU-Net folder paths, atomic writes,
quieting nnU-Net's prints, process checks and the unlabelled-case convention.

It imports nothing of ours. Importing it sets defaults for nnU-Net's folder variables (see
`paths`) before nnunetv2 is imported anywhere, so that every command works without setup; both
`planning` and `diffusion_nnunet` import it first.
"""
from dnnunet_core import paths as _paths

_paths.set_default_environment()

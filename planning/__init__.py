"""Stage 1: what to train, decided from the data (fingerprint, compute budget, plans, checks).

Imports only the core (`dnnunet_core`), first, so that nnU-Net's folder defaults are set before
any planning module imports nnunetv2.
"""
import dnnunet_core  # noqa: F401  (sets nnU-Net's folder defaults before nnunetv2 is imported)

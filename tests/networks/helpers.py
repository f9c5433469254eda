"""Helpers shared by the denoiser tests and the tests built on its tiny plans."""
from __future__ import annotations

IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def _arch(conv: str, norm: str, features, kernels, strides, n_conv=2, n_conv_dec=2,
          cls="dynamic_network_architectures.architectures.unet.PlainConvUNet"):
    n = len(features)
    return {
        "network_class_name": cls,
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": conv,
            "kernel_sizes": kernels,
            "strides": strides,
            "n_conv_per_stage": [n_conv] * n,
            "n_conv_per_stage_decoder": [n_conv_dec] * (n - 1),
            "conv_bias": True,
            "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": list(IMPORTS),
    }


# hand-written nnU-Net-style plans: a small 2D config and an anisotropic 3D one
PLANS = {
    "dataset_name": "Dataset999_Tiny",
    "plans_name": "nnUNetPlans",
    "configurations": {
        "2d": {
            "patch_size": [32, 32],
            "batch_size": 2,
            "architecture": _arch("torch.nn.modules.conv.Conv2d", "torch.nn.modules.instancenorm.InstanceNorm2d",
                                  (8, 16, 32, 32), [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 2]]),
        },
        "3d_fullres": {
            "patch_size": [8, 16, 16],
            "batch_size": 1,
            "architecture": _arch("torch.nn.modules.conv.Conv3d", "torch.nn.modules.instancenorm.InstanceNorm3d",
                                  (4, 8, 16), [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                                  [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
        },
    },
}


def _cfg(name):
    return PLANS["configurations"][name]

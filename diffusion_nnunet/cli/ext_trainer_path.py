"""dnnunet ext-trainer-path: prints the folder to put in nnunetv2's nnUNet_extTrainer."""


def add_arguments(p):
    p.epilog = "usage: export nnUNet_extTrainer=$(dnnunet ext-trainer-path)"


def run(args):
    from pathlib import Path

    import diffusion_nnunet

    print(Path(diffusion_nnunet.__file__).parent / "nnunet_ext")
    return 0

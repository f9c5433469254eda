"""dnnunet install-model (nnUNetv2_install_pretrained_model_from_zip, without silent replacement)"""


def add_arguments(p):
    p.add_argument("zip", help="a model zip (from dnnunet export-model or nnUNetv2_export_model_to_zip)")
    p.add_argument("--overwrite", action="store_true", help="replace installed model folders of the same names")


def run(args):
    from diffusion_nnunet.model_sharing import install_model

    for folder in install_model(args.zip, args.overwrite):
        print(f"installed {folder}")
    return 0

"""dnnunet predict-ensemble"""


def add_arguments(p):
    from diffusion_nnunet.cli.common import add_device_argument, fold

    p.add_argument("-i", "--input", required=True, help="folder of images")
    p.add_argument("-o", "--output", required=True, help="writes OUT/nnunet, OUT/pd_ddpm and OUT/ensemble")
    p.add_argument("--nnunet", required=True, help="nnU-Net model folder (ours or stock nnunetv2)")
    p.add_argument("--diffusion", required=True, help="diffusion model folder (e.g. ..._recycle__dnnunetPlans__2d)")
    p.add_argument("--nnunet-folds", nargs="+", type=fold, default=None, help="folds of the nnU-Net model (default: all)")
    p.add_argument("--diffusion-folds", nargs="+", type=fold, default=None, help="folds of the diffusion model (default: all)")
    p.add_argument("--start-step", type=int, default=None, help="PD-DDPM start step (default: the plans')")
    p.add_argument("--num-samples", type=int, default=None,
                   help="diffusion samples (above 1: uncertainty maps; default: one per mirror variant, 4 in 2D "
                        "and 8 in 3D; with --disable-tta the plans' proposal)")
    p.add_argument("--sample-mirroring", choices=["cycle", "product"], default=None,
                   help="cycle (default): sample i on mirror variant i mod M; product: every sample on every variant")
    p.add_argument("--tile-batch", type=int, default=None,
                   help="sliding-window tiles per forward pass (default: from the plans' batch size)")
    p.add_argument("-w", "--weights", nargs=2, type=float, default=None, help="ensemble weights: PD-DDPM nnU-Net")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--disable-tta", action="store_true", help="no test-time mirroring")
    add_device_argument(p)


def run(args):
    from diffusion_nnunet.cli.predict import parse_folds
    from diffusion_nnunet.inference.combined import predict_with_ensemble
    from diffusion_nnunet.inference.output_folder import refuse_output_inside_input
    from diffusion_nnunet.utils.device import resolve_device

    refuse_output_inside_input(args.input, args.output)
    folders = predict_with_ensemble(args.nnunet, args.diffusion, args.input, args.output,
                                    parse_folds(args.nnunet_folds), parse_folds(args.diffusion_folds), args.start_step,
                                    args.num_samples, args.weights,
                                    args.seed, resolve_device(args.device), not args.disable_tta,
                                    tile_batch=args.tile_batch, sample_mirroring=args.sample_mirroring)
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    return 0

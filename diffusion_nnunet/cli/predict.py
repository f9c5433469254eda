"""dnnunet predict"""
from diffusion_nnunet.cli.common import add_device_argument, add_model_arguments, fold
from diffusion_nnunet.diffusion.sampling import SAMPLERS


def add_arguments(p):
    p.add_argument("-i", "--input", required=True, help="folder of images (CASE_0000.nii.gz, ...)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-m", "--model", default=None, help="model folder (instead of -d/-c/-tr/-p); stock nnunetv2 "
                                                       "model folders work too")
    add_model_arguments(p, dataset_required=False)
    p.add_argument("-f", "--folds", nargs="+", type=fold, default=None, help="folds to use (default: all trained)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz/CASE.pkl")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring at test time (faster)")
    p.add_argument("-step", "--step-size", type=float, default=0.5, help="sliding-window step (fraction of patch)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--continue-prediction", action="store_true",
                          help="keep the cases already in OUT (only if OUT/predict_args.json records the same "
                               "settings) and predict the others")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an OUT that holds results of another run, whole (without it, or "
                               "--continue-prediction, such an OUT is refused)")
    p.add_argument("-prev_stage_predictions", "--prev-stage-predictions", default=None, metavar="FOLDER",
                   help="cascade stage (3d_cascade_fullres): the 3d_lowres segmentations to start from, as "
                        "nnUNetv2_predict takes them (default: the chain runs, the 3d_lowres model beside the "
                        "cascade model predicting into OUT/3d_lowres first)")
    p.add_argument("--tile-batch", type=int, default=None,
                   help="sliding-window tiles per forward pass (default: from the plans' batch size)")
    g = p.add_argument_group("diffusion models")
    g.add_argument("--sampler", choices=SAMPLERS, default=None, help="reverse process (default: ddpm)")
    g.add_argument("--steps", type=int, default=None, help="reverse steps (default: all steps of training)")
    g.add_argument("--num-samples", type=int, default=None,
                   help="samples averaged per case (default: one per mirror variant, 4 in 2D and 8 in 3D, "
                        "1 with --disable-tta); above 1, uncertainty maps are written to OUT/uncertainty/ "
                        "(entropy, variance, mutual information)")
    g.add_argument("--sample-mirroring", choices=["cycle", "product"], default=None,
                   help="cycle (default): sample i runs on mirror variant i mod M, the samples are the "
                        "test-time augmentation; product: every sample on every variant (M times the cost)")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampler's noise (default 0)")
    g.add_argument("--save-every-step", action="store_true",
                   help="also write each step's prediction and probabilities to OUT/steps/step_KK/")
    g.add_argument("--overview", "--overview-png", dest="overview", action="store_true",
                   help="with more than one sample: a PNG per case (image, prediction, entropy) and "
                        "OUT/uncertainty/contact_sheet.png, least certain cases first")
    g.add_argument("--no-case-scores", action="store_true",
                   help="do not keep each sample's probabilities (less memory): no OUT/uncertainty/cases.csv")
    pd = p.add_argument_group("PD-DDPM (start from a pre-segmentation)")
    src = pd.add_mutually_exclusive_group()
    src.add_argument("--presegmenter", default=None,
                     help="nnU-Net model folder (ours or stock nnunetv2) that pre-segments first")
    src.add_argument("--presegmentation", default=None,
                     help="folder of existing pre-segmentations (CASE.npz probabilities or label maps)")
    pd.add_argument("--start-step", type=int, default=None,
                    help="noise the pre-segmentation to this step and run only steps k..0")
    pd.add_argument("--soft-start", action="store_true", help="start from 2p-1 instead of the argmax")
    add_device_argument(p)


def parse_folds(values):
    """Fold arguments as nnU-Net takes them: integers, or 'all' (already checked by `common.fold`)."""
    return None if values is None else [v if v == "all" else int(v) for v in values]


def run(args):
    from pathlib import Path

    from diffusion_nnunet.inference.folder_prediction import predict_and_review
    from diffusion_nnunet.inference.predictor import model_folder
    from diffusion_nnunet.utils.device import resolve_device
    from dnnunet_core.errors import UserInputError

    if args.model is None and args.dataset is None:
        raise UserInputError("give a model folder with -m, or -d DATASET (with -c/-tr/-p)")
    folder = args.model or model_folder(args.dataset, args.trainer, args.configuration, args.plans)
    diffusion = {"sampler": args.sampler, "num_steps": args.steps, "num_samples": args.num_samples,
                 "seed": args.seed, "save_every_step": args.save_every_step or None,
                 "presegmenter": args.presegmenter, "presegmentation": args.presegmentation,
                 "start_step": args.start_step, "soft_start": args.soft_start or None,
                 "sample_mirroring": args.sample_mirroring, "tile_batch": args.tile_batch}
    review = predict_and_review(folder, args.input, args.output, parse_folds(args.folds), args.checkpoint,
                                resolve_device(args.device), args.save_probabilities, not args.disable_tta,
                                args.step_size, args.overwrite, diffusion, args.continue_prediction,
                                case_scores=not args.no_case_scores, overview=args.overview,
                                previous_stage_predictions=args.prev_stage_predictions).review
    if review is not None:
        shown = ", ".join(f"{c} ({review['scores'][c]:.3g})" for c in review["order"][:5])
        print(f"least certain cases (by {review['sorted_by']}): {shown}")
        if review["flagged"] is not None:
            print(f"flagged for review: {len(review['flagged'])} of {len(review['order'])} cases "
                  f"({review['review_flag']['score']} >= {review['review_flag']['threshold']:.4g})")
        print(f"review list: {Path(args.output) / 'uncertainty' / 'cases.csv'}")
        if review["contact_sheet"]:
            print(f"contact sheet: {review['contact_sheet']}")
    return 0

"""dnnunet fit-review-flag"""
from diffusion_nnunet.cli.common import add_device_argument, add_model_arguments


def add_arguments(p):
    p.add_argument("-m", "--model", default=None, help="model folder (instead of -d/-c/-tr/-p)")
    add_model_arguments(p, dataset_required=False)
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0],
                   help="folds whose validation cases are predicted (default: 0; each must be trained)")
    p.add_argument("--num-samples", type=int, default=5, help="diffusion samples per case (default 5)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--presegmenter", default=None, help="PD-DDPM: nnU-Net model folder that pre-segments first")
    p.add_argument("--start-step", type=int, default=None, help="PD-DDPM start step (default: the plans')")
    p.add_argument("--dice-level", type=float, default=None,
                   help="a case is bad at or below this Dice (default: the validation's 10th percentile)")
    p.add_argument("--flag-rate", type=float, default=0.2, help="flag at most this share of cases (default 0.2)")
    add_device_argument(p)


def run(args):
    from diffusion_nnunet.inference.predictor import model_folder
    from diffusion_nnunet.review_flag_fit import fit_review_flag_on_validation
    from diffusion_nnunet.utils.device import resolve_device
    from dnnunet_core.errors import UserInputError

    if args.model is None and args.dataset is None:
        raise UserInputError("give a model folder with -m, or -d DATASET (with -c/-tr/-p)")
    folder = args.model or model_folder(args.dataset, args.trainer, args.configuration, args.plans)
    flag = fit_review_flag_on_validation(folder, args.folds, args.num_samples, args.seed, args.presegmenter,
                                         args.start_step, args.dice_level, args.flag_rate,
                                         resolve_device(args.device))
    for name, r in sorted(flag["all"].items(), key=lambda kv: -kv[1]["recall"]):
        mark = "*" if name == flag["score"] else " "
        print(f"{mark} {name:20s} recall {r['recall']:.2f}  precision {r['precision']:.2f}  "
              f"Spearman {r['spearman']:+.2f}  threshold {r['threshold']:.4g}")
    print(f"flag: {flag['score']} >= {flag['threshold']:.4g} (bad: Dice <= {flag['dice_level']:.4f}, "
          f"{flag['num_bad']} of {flag['num_cases']} validation cases); written to {flag['file']}")
    return 0

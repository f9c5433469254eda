"""dnnunet find-best"""
from diffusion_nnunet.cli.common import add_device_argument, fold_index


def add_arguments(p):
    p.add_argument("-d", "--dataset", required=True, help="dataset id or DatasetXXX_Name")
    p.add_argument("-c", "--configuration", default="2d", help="plans configuration (default: 2d)")
    p.add_argument("-f", "--folds", nargs="+", type=fold_index, default=[0],
                   help="folds whose validation cases decide (default: 0; each model needs them trained)")
    p.add_argument("--nnunet", default=None, help="nnU-Net model folder (default: our baseline's; stock "
                                                  "nnunetv2 folders work too)")
    p.add_argument("--diffusion", nargs="+", default=None,
                   help="diffusion model folders (default: every trained diffusion trainer)")
    p.add_argument("--start-steps", nargs="+", type=int, default=None,
                   help="PD-DDPM start steps to try (default: all below full sampling)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="diffusion samples per case (default: with --tta one per mirror variant, else 1)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--tta", action="store_true", help="test-time mirroring (slower: it multiplies sampling)")
    # --keep-plans: the earlier name, from when the start step went into plans.json
    p.add_argument("--keep-defaults", "--keep-plans", dest="keep_defaults", action="store_true",
                   help="do not record the best PD-DDPM start step in the diffusion models' inference_defaults.json")
    add_device_argument(p)


def run(args):
    from diffusion_nnunet.find_best import find_best
    from diffusion_nnunet.utils.device import resolve_device

    info = find_best(args.dataset, args.configuration, args.folds, args.nnunet, args.diffusion, args.start_steps,
                     args.num_samples, args.seed, resolve_device(args.device), args.tta, not args.keep_defaults)
    width = max(len(c["name"]) for c in info["candidates"])
    for c in sorted(info["candidates"], key=lambda c: -c["dice"]):
        mark = "*" if c["name"] == info["best"]["name"] else " "
        print(f"{mark} {c['name']:{width}s}  Dice {c['dice']:.4f}")
    print(f"best: {info['best']['name']}; instructions in {info['instructions']}")
    return 0

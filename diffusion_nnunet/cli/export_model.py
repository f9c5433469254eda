"""dnnunet export-model (nnUNetv2_export_model_to_zip's layout and flags)"""
from diffusion_nnunet.cli.common import fold
from planning.planner import DEFAULT_PLANS_NAME


def add_arguments(p):
    p.add_argument("-o", "--output", required=True, help="the zip file to write")
    p.add_argument("-m", "--model", nargs="+", default=None,
                   help="model folder(s) (instead of -d/-c/-tr/-p); stock nnunetv2 model folders work too")
    p.add_argument("-d", "--dataset", default=None, help="dataset id or DatasetXXX_Name")
    p.add_argument("-c", "--configurations", nargs="+", default=None,
                   help="configurations (default: every one trained with -tr and -p)")
    p.add_argument("-tr", "--trainer", default="baseline", help="registered trainer name or class (default: baseline)")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS_NAME, help=f"plans identifier (default: {DEFAULT_PLANS_NAME})")
    p.add_argument("-f", "--folds", nargs="+", type=fold, default=None,
                   help="folds (default: every fold with the checkpoint)")
    p.add_argument("-chk", "--checkpoints", nargs="+", default=["checkpoint_final.pth"],
                   help="checkpoint files per fold (default: checkpoint_final.pth)")
    p.add_argument("--exp-cv-preds", action="store_true", help="also the validation predictions (without npz/pkl)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing zip")


def run(args):
    from diffusion_nnunet.model_sharing import export_model, model_folders_for
    from dnnunet_core.errors import UserInputError

    if (args.model is None) == (args.dataset is None):
        raise UserInputError("give model folders with -m, or -d DATASET (with -c/-tr/-p), not both")
    models = args.model or model_folders_for(args.dataset, args.trainer, args.plans, args.configurations)
    names = export_model(models, args.output, args.folds, args.checkpoints, args.exp_cv_preds, args.overwrite)
    print(f"{args.output}: {len(names)} files of {len(models)} model folder(s)")
    return 0

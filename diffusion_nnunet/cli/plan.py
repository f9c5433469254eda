"""dnnunet plan-and-preprocess"""
from planning.budget import PRESETS
from planning.planner_presets import DEFAULT_PLANNER, PLANNERS


def add_arguments(p):
    from diffusion_nnunet.cli.common import DEFAULT_PLANS_NAME, positive_int

    p.add_argument("-d", "--dataset", nargs="+", required=True, help="dataset id(s) or DatasetXXX_Name")
    p.add_argument("--budget", choices=list(PRESETS), default=None,
                   help="compute budget (default: gpu if CUDA is available, else cpu-small)")
    p.add_argument("--seconds-per-iteration", type=float, default=None, help="override the budget's time target")
    p.add_argument("-c", "--configurations", nargs="+", default=None, help="configurations to preprocess (default: all)")
    # no argparse choices: an unknown planner is a UserInputError that lists them (nnU-Net class names work too)
    p.add_argument("-pl", "--planner", default=DEFAULT_PLANNER,
                   help=f"planner preset: {', '.join(PLANNERS)} (default: {DEFAULT_PLANNER}, plans {DEFAULT_PLANS_NAME}); "
                        "ResEnc plans are named as nnU-Net names them, plus the budget's name unless --budget gpu, "
                        "e.g. nnUNetResEncUNetMPlans_cpu-small")
    p.add_argument("-p", "--plans", default=None,
                   help="plans identifier (default: the planner's, see -pl); train and predict take it as -p")
    p.add_argument("-np", "--num-processes", type=positive_int, default=2, help="worker processes (default: 2)")
    p.add_argument("--plan-only", action="store_true", help="write fingerprint and plans, skip preprocessing")
    p.add_argument("--skip-checks", action="store_true", help="do not validate the raw data first (not recommended)")


def run(args):
    from planning.budget import get_budget
    from planning.pipeline import plan_and_preprocess

    budget = get_budget(args.budget, args.seconds_per_iteration)
    for dataset in args.dataset:
        plan_and_preprocess(dataset, budget, args.configurations, args.plans, args.num_processes,
                            validate=not args.skip_checks, preprocess=not args.plan_only, planner=args.planner)
    return 0

"""dnnunet train"""
import json
import os
import sys

from diffusion_nnunet.cli.common import add_device_argument, add_model_arguments
from diffusion_nnunet.diffusion.sampling import SAMPLERS
from diffusion_nnunet.training.semi_presets import PRESETS
from planning.plan_sections import DEFAULT_TIMESTEPS


def add_arguments(p):
    add_model_arguments(p, dataset_required=False)  # required unless --list-trainers (checked in run)
    p.add_argument("-f", "--fold", default=None,
                   help="a fold of the split (0-4 for nnU-Net's 5-fold split, 0..n-1 of splits_final.json) or 'all'")
    p.add_argument("--continue", dest="continue_training", action="store_true",
                   help="resume the fold's run from its newest good checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the earlier results instead of refusing or keeping them: the whole model folder "
                        "when it was trained with other plans, else the fold's earlier run (which a new run "
                        "otherwise moves to previous_runs/)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: from the plans' budget)")
    p.add_argument("--iterations", type=int, default=None, help="iterations per epoch (default: from the plans)")
    p.add_argument("--val-iterations", type=int, default=None, help="pseudo-validation iterations per epoch")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default 0.01)")
    p.add_argument("--seed", type=int, default=None, help="seed python/numpy/torch")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N epochs (default 1)")
    p.add_argument("--skip-validation", action="store_true", help="skip the final validation")
    p.add_argument("--npz", action="store_true", help="save validation probabilities (for ensembles)")
    g = p.add_argument_group("several processes (see docs/distributed.md)")
    g.add_argument("--num-processes", type=int, default=1,
                   help="data-parallel processes on this machine: one per GPU with cuda, gloo on the cpu; "
                        "under torchrun leave at 1 (default 1)")
    g.add_argument("--collective-timeout", type=float, default=None, metavar="SECONDS",
                   help="seconds a rank waits for the others in a collective before the run fails (default 1800)")
    g = p.add_argument_group("diffusion trainers")
    g.add_argument("--timesteps", type=int, default=None, help=f"T of the noise schedule (default: plans, {DEFAULT_TIMESTEPS})")
    g.add_argument("--timestep-sampling", choices=["uniform", "importance"], default=None,
                   help="how training timesteps are drawn (default uniform)")
    g.add_argument("--val-sampler", choices=SAMPLERS, default=None, help="sampler for validation")
    g.add_argument("--val-sampling-steps", type=int, default=None, help="reverse steps at validation (default T)")
    g.add_argument("--denoiser", choices=["early", "late"], default=None,
                   help="denoiser network: early (image and noisy mask concatenated at the input, default) or "
                        "late (late fusion: image encoder once per tile; research, docs/diffusion.md)")
    g = p.add_argument_group("semi-supervised trainers (semi_teacher, semi_cotrain, cps)")
    g.add_argument("--teacher", default=None, metavar="MODEL_FOLDER",
                   help="semi_cotrain: results folder of the pre-trained semi_teacher model")
    g.add_argument("--rounds", type=int, default=None, help="semi_cotrain: reconstruction rounds R (default 1)")
    g.add_argument("--semi-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other semi-supervised setting (a SemiSupervisedConfig field, docs/semi_supervised.md), "
                        "e.g. copy_paste=0 or pseudo_threshold=0.9; the value is read as JSON; repeatable")
    g.add_argument("--semi-preset", default=None, choices=sorted(PRESETS),
                   help="a named set of SemiSupervisedConfig values (docs/semi_supervised.md), under --rounds and "
                        "--semi-option: 'authors' = the method's authors' own configuration")
    add_device_argument(p)
    p.epilog = "trainers: see `dnnunet train --list-trainers`"
    p.add_argument("--list-trainers", action="store_true", help="list registered trainers and exit")


def parse_semi_options(items: list[str]) -> dict:
    """``["copy_paste=0", "chain_rounds=false"]`` -> ``{"copy_paste": 0, "chain_rounds": False}``.

    A value that is not JSON is taken as a string. Unknown keys and bad values are refused later,
    by the config.

    Raises:
        UserInputError: an item without ``=``, a null value (an override of None means "not
            given" to the config merge), or teacher/rounds (they have their own flags).
    """
    from dnnunet_core.errors import UserInputError

    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserInputError(f"--semi-option {item!r}: expected KEY=VALUE, e.g. copy_paste=0")
        if key in ("teacher", "rounds"):
            raise UserInputError(f"--semi-option {key}: use --{key}")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
        if options[key] is None:
            raise UserInputError(f"--semi-option {item!r}: null cannot be set from the command line")
    return options


def run(args):
    from diffusion_nnunet.configs import trainer_registry as registry
    from diffusion_nnunet.training.distributed import WorkerFailedError
    from diffusion_nnunet.training.fold_state import resume_command
    from diffusion_nnunet.training.run import train
    from diffusion_nnunet.utils.device import resolve_device
    from dnnunet_core.errors import UserInputError

    if args.list_trainers:
        for name, entry in sorted(registry.available().items()):
            print(f"{name:20s} {entry.cls.__name__:30s} {entry.description}")
        return 0
    missing = [flag for flag, value in (("-d/--dataset", args.dataset), ("-f/--fold", args.fold)) if value is None]
    if missing:
        raise UserInputError(f"the following arguments are required: {', '.join(missing)}")
    overrides = {"num_epochs": args.epochs, "num_iterations_per_epoch": args.iterations,
                 "num_val_iterations_per_epoch": args.val_iterations, "initial_lr": args.lr, "seed": args.seed,
                 "save_every": args.save_every, "collective_timeout_s": args.collective_timeout}
    diffusion = {"timesteps": args.timesteps, "timestep_sampling": args.timestep_sampling,
                 "sampler": args.val_sampler, "sampling_steps": args.val_sampling_steps, "denoiser": args.denoiser}
    if any(v is not None for v in diffusion.values()):
        overrides["diffusion"] = diffusion
    from diffusion_nnunet.training.semi_presets import semi_overrides

    semi = semi_overrides(args.trainer, args.semi_preset, args.teacher, args.rounds,
                          parse_semi_options(args.semi_option))
    if semi:
        overrides["semi"] = semi
    try:
        folder = train(args.dataset, args.configuration, args.fold, args.trainer, args.plans, overrides,
                       resolve_device(args.device), args.continue_training, not args.skip_validation, args.npz,
                       num_processes=args.num_processes, overwrite=args.overwrite)
    except WorkerFailedError as err:
        print(f"dnnunet train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dnnunet train: interrupted; the checkpoints written so far are kept. Resume with:\n  "
              + resume_command(args.dataset, args.configuration, args.fold, args.trainer, args.plans,
                               args.num_processes, args.device), file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank gets here
        print(folder)
    return 0

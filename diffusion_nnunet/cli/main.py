"""`dnnunet` entry point: builds the subcommands and turns user errors into clear messages."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dnnunet_core.errors import UserInputError

# subcommand name -> module with add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "make-dataset": ("diffusion_nnunet.cli.make_dataset", "write a generated nnU-Net raw dataset"),
    "plan-and-preprocess": ("diffusion_nnunet.cli.plan", "check data, fingerprint, plan with a budget, preprocess"),
    "train": ("diffusion_nnunet.cli.train", "train one fold of a registered trainer"),
    "predict": ("diffusion_nnunet.cli.predict", "predict a folder of images"),
    "ensemble": ("diffusion_nnunet.cli.ensemble", "average the probabilities of prediction folders"),
    "predict-ensemble": ("diffusion_nnunet.cli.predict_ensemble",
                         "nnU-Net, PD-DDPM from its prediction, and their ensemble, for one folder"),
    "find-best": ("diffusion_nnunet.cli.find_best",
                  "pick nnU-Net, diffusion, PD-DDPM (start step) or an ensemble on the validation folds"),
    "fit-review-flag": ("diffusion_nnunet.cli.fit_review_flag",
                        "fit on the validation folds which case score flags cases for review"),
    "evaluate": ("diffusion_nnunet.cli.evaluate", "Dice, HD95 and NSD of a prediction folder"),
    "demo": ("diffusion_nnunet.cli.demo", "the whole pipeline on a generated dataset"),
    "export-model": ("diffusion_nnunet.cli.export_model", "write trained model folders into a zip (nnU-Net's layout)"),
    "install-model": ("diffusion_nnunet.cli.install_model",
                      "install a model zip (ours or nnunetv2's) into nnUNet_results"),
    "ext-trainer-path": ("diffusion_nnunet.cli.ext_trainer_path", "folder for nnunetv2's nnUNet_extTrainer"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnnunet", description="Diffusion segmentation on top of nnU-Net v2.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages (nnU-Net's own output)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # third-party chatter stays at warning level unless asked for
    for noisy in ("matplotlib", "PIL", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            return int(importlib.import_module(args._module).run(args) or 0)
    except UserInputError as err:
        print(f"dnnunet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

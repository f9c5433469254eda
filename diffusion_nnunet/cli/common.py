"""Arguments shared by several subcommands, spelled as nnU-Net spells them."""
from __future__ import annotations

import argparse

from planning.planner import DEFAULT_PLANS_NAME


def add_model_arguments(p: argparse.ArgumentParser, dataset_required: bool = True) -> None:
    p.add_argument("-d", "--dataset", required=dataset_required, help="dataset id or DatasetXXX_Name")
    p.add_argument("-c", "--configuration", default="2d", help="plans configuration (default: 2d)")
    p.add_argument("-tr", "--trainer", default="baseline", help="registered trainer name (default: baseline)")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS_NAME, help=f"plans identifier (default: {DEFAULT_PLANS_NAME})")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("-device", "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="torch device (default: cuda if available, else mps, else cpu)")


def fold(text: str):
    """argparse type of a fold: 'all' or a non-negative integer (the split's range is checked later)."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold: give 0, 1, ... or 'all'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold: folds are 0, 1, ... or 'all'")
    return value


def fold_index(text: str) -> int:
    """argparse type of a cross-validation fold number (no 'all': validation cases are needed)."""
    value = fold(text)
    if value == "all":
        raise argparse.ArgumentTypeError("'all' has no validation cases: give fold numbers 0, 1, ...")
    return value


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (worker processes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value

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

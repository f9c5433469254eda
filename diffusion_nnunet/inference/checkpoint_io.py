"""Reading checkpoints for prediction, with messages that name the file instead of tracebacks."""
from __future__ import annotations

from pathlib import Path

import torch

from dnnunet_core.errors import InvalidDataError

_REQUIRED_KEYS = ("network_weights", "trainer_name", "init_args")


def read_checkpoint(path: str | Path) -> dict:
    """Load an nnU-Net checkpoint on the CPU.

    Raises:
        InvalidDataError: the file is truncated, not a torch file, or not an nnU-Net checkpoint.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises assorted errors for damaged files
        raise InvalidDataError(path, f"cannot be read as a checkpoint ({type(err).__name__}: {err}); the file is "
                                     f"truncated or damaged (an interrupted copy or training?)") from None
    missing = [k for k in _REQUIRED_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise InvalidDataError(path, f"is not an nnU-Net checkpoint (no {', '.join(missing)})")
    return checkpoint


def load_weights(network: torch.nn.Module, weights: dict, path: str | Path, model_folder: str | Path) -> None:
    """`network.load_state_dict(weights)`, explaining a mismatch between checkpoint and plans.

    Raises:
        InvalidDataError: the weights do not fit the network the model folder's plans describe.
    """
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:4]) or first[0]
        raise InvalidDataError(path, f"its weights do not fit the network that {Path(model_folder) / 'plans.json'} "
                                     f"describes ({detail}): the model folder's plans changed since this fold was "
                                     f"trained (re-planned?). Retrain the fold, or restore the plans it was trained "
                                     f"with; plan with a new plans identifier (-p) to keep trained models") from None

"""Train one fold: build the trainer from the registry, resume if asked, train, validate.

`train` is the entry point for one or several processes (see `training/distributed.py`): it
checks the fold and the model folder and holds the fold's lock; `_train_fold_here` is what
each process runs.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from diffusion_nnunet.configs import trainer_registry as registry
from diffusion_nnunet.configs.training_config import TrainingConfig, merge_config_values
from diffusion_nnunet.training import cascade, distributed, fold_lock, fold_state
from diffusion_nnunet.training.base import CONFIG_FILE, PREVIOUS_CHECKPOINT
from dnnunet_core import paths
from dnnunet_core.errors import UserInputError
from dnnunet_core.paths import find_dataset_folder
from dnnunet_core.quiet import nnunet_output_to_log
from planning.pipeline import preprocessed_plans_file
from planning.planner import DEFAULT_PLANS_NAME
from planning.preprocessing_state import require_complete as require_complete_preprocessing

logger = logging.getLogger(__name__)

CHECKPOINT_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", PREVIOUS_CHECKPOINT, "checkpoint_best.pth")
DEFAULT_COLLECTIVE_TIMEOUT_S = TrainingConfig().collective_timeout_s


def find_resume_checkpoint(fold_folder: str | Path) -> Path | None:
    """The checkpoint to continue from, skipping unreadable files.

    The readable one of final, latest, previous and best with the most epochs done (ties: in
    that order). Not checkpoint_final whatever its age: a run continued past its end (more
    --epochs) writes newer latest checkpoints beside the old final, and a crash then must not
    throw them away. (A new run never finds an older run's files: `train` moves them aside.)
    A checkpoint that fails to load (truncated, corrupted) is reported and skipped.
    """
    best: tuple[int, Path] | None = None
    for name in CHECKPOINT_ORDER:
        path = Path(fold_folder) / name
        if not path.is_file():
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            if "network_weights" not in ckpt or "current_epoch" not in ckpt:
                raise ValueError("missing network weights or epoch")
        except Exception as err:  # noqa: BLE001 - any failure to read means: not usable
            logger.warning("%s is unreadable (%s); trying an older checkpoint", path, err)
            continue
        if best is None or ckpt["current_epoch"] > best[0]:
            best = (int(ckpt["current_epoch"]), path)
    return None if best is None else best[1]


def build_trainer(dataset: str, configuration: str, fold: int | str, trainer: str = "baseline",
                  plans_name: str = DEFAULT_PLANS_NAME, device: torch.device = torch.device("cpu"),
                  continue_training: bool = False):
    """Instantiate a registered trainer for a preprocessed dataset (no training yet)."""
    dataset_name, plans = load_plans(dataset, configuration, plans_name)
    dataset_json = json.loads((paths.preprocessed() / dataset_name / "dataset.json").read_text())
    plans["continue_training"] = continue_training
    entry = registry.get(trainer)
    fold = fold if fold == "all" else int(fold)
    with nnunet_output_to_log(logger):  # nnU-Net prints its device and citation banner
        return entry, entry.cls(plans, configuration, fold, dataset_json, device)


def load_plans(dataset: str, configuration: str, plans_name: str = DEFAULT_PLANS_NAME) -> tuple[str, dict]:
    """(dataset folder name, plans) of a preprocessed dataset, checking that `configuration` is planned."""
    dataset_name = find_dataset_folder(paths.preprocessed(), dataset).name
    plans = json.loads(preprocessed_plans_file(dataset_name, plans_name).read_text())
    if configuration not in plans["configurations"]:
        raise UserInputError(f"configuration {configuration!r} is not in the plans of {dataset_name}; "
                             f"planned: {', '.join(plans['configurations'])}")
    return dataset_name, plans


def train(dataset: str, configuration: str, fold: int | str, trainer: str = "baseline",
          plans_name: str = DEFAULT_PLANS_NAME, config_overrides: dict | None = None,
          device: torch.device = torch.device("cpu"), continue_training: bool = False, validate: bool = True,
          save_probabilities: bool = False, num_processes: int = 1, overwrite: bool = False) -> Path:
    """Train one fold in this process, in `num_processes` local processes, or as one rank of a
    torchrun launch (when torchrun's WORLD_SIZE is set).

    Before any work, the process that launches (rank 0 under torchrun) checks the fold against
    the split, takes the fold's lock for the whole run, refuses a model folder trained with
    other plans, and moves an earlier run of the fold aside (see `fold_state.py`).

    Args:
        num_processes: local data-parallel processes (must be 1 under torchrun, which starts them).
        overwrite: delete what a new run would otherwise refuse or keep: the whole model folder
            if it was trained with other plans, else the fold's earlier run (instead of moving it
            to previous_runs/). Not with `continue_training`.
        Others: as `train_fold`.

    Returns:
        The fold's output folder.

    Raises:
        UserInputError: a fold outside the split, a fold another run holds (lock), other plans.
        distributed.WorkerFailedError: a local process died; the others were stopped.
    """
    env = distributed.DistributedEnv.from_environ()
    if num_processes < 1:
        raise UserInputError(f"--num-processes must be at least 1, got {num_processes}")
    if env is not None and num_processes > 1:
        raise UserInputError("--num-processes is for local launches; under torchrun use --nproc-per-node")
    if overwrite and continue_training:
        raise UserInputError("--overwrite starts a new run and --continue resumes one: give one of them")
    fold = _checked_fold(dataset, fold)
    require_complete_preprocessing(dataset, configuration, plans_name)  # before the guard moves anything
    _check_cascade(dataset, configuration, trainer, plans_name, validate)
    world = env.world_size if env is not None else num_processes
    if world > 1:  # before the guard below moves anything
        _check_distributed_launch(dataset, configuration, trainer, plans_name, world, device)
    kwargs = dict(dataset=dataset, configuration=configuration, fold=fold, trainer=trainer, plans_name=plans_name,
                  config_overrides=config_overrides, continue_training=continue_training, validate=validate,
                  save_probabilities=save_probabilities)
    if env is not None and env.rank != 0:  # rank 0 holds the lock and prepares the folder
        return _launch(env, num_processes, device, kwargs)
    with _guarded_fold(dataset, configuration, fold, trainer, plans_name, continue_training, overwrite):
        return _launch(env, num_processes, device, kwargs)


def _check_cascade(dataset: str, configuration: str, trainer: str, plans_name: str, validate: bool) -> None:
    """nnU-Net's cascade: a second stage needs the first stage's predictions (see `cascade.py`)."""
    from planning.preprocessing_state import preprocessed_cases

    dataset_name, plans = load_plans(dataset, configuration, plans_name)
    cascade.warn_if_next_stage_unprepared(dataset, plans, configuration, plans_name, validate)
    if cascade.previous_stage(plans, configuration) is None:
        return
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    trainer_class = registry.get(trainer).cls
    if trainer_class.perform_actual_validation is not nnUNetTrainer.perform_actual_validation:
        # its own validation (the diffusion sampler's) does not add the previous stage's channels
        raise UserInputError(f"{configuration} (nnU-Net's cascade) trains with nnU-Net's validation, i.e. the "
                             f"baseline; {trainer!r} validates its own way. Diffusion models take the cascade as "
                             f"PD-DDPM's pre-segmenter: train them on 3d_fullres and predict with --presegmenter "
                             f"<the cascade model folder>")

    data = paths.preprocessed() / dataset_name / PlansManager(plans).get_configuration(configuration).data_identifier
    cascade.require_previous_stage(dataset_name, plans, configuration, trainer_class.__name__, plans_name,
                                   preprocessed_cases(data), trainer)


def _checked_fold(dataset: str, fold: int | str) -> int | str:
    """The fold if the preprocessed dataset's split has it (see `fold_state.check_fold`)."""
    dataset_name = find_dataset_folder(paths.preprocessed(), dataset).name
    return fold_state.check_fold(fold, paths.preprocessed() / dataset_name / "splits_final.json")


@contextmanager
def _guarded_fold(dataset: str, configuration: str, fold: int | str, trainer: str, plans_name: str,
                  continue_training: bool, overwrite: bool):
    """Hold the fold's lock; inside it, refuse other plans and set an earlier run aside."""
    entry = registry.get(trainer)
    dataset_name, plans = load_plans(dataset, configuration, plans_name)
    model = paths.trained_model_folder(dataset_name, entry.cls.__name__, plans_name, configuration)
    with fold_lock.fold_lock(model, fold):
        try:
            fold_state.check_same_plans(model, plans, configuration)
        except UserInputError:
            if not overwrite:
                raise
            with fold_lock.all_fold_locks(model, fold_state.other_folds(model, fold)):
                fold_state.delete_model_folder(model)
        if not continue_training:
            fold_state.set_aside_previous_run(model / f"fold_{fold}", overwrite)
        yield


def _launch(env, num_processes: int, device: torch.device, kwargs: dict) -> Path:
    """Run `_train_fold_here` here, in local processes, or in torchrun's process group."""
    if env is None and num_processes == 1:
        return _train_fold_here(device=device, **kwargs)
    timeout = collective_timeout(kwargs)
    if env is not None:
        return distributed.run_from_environment(_train_fold_job, (kwargs,), device, timeout)
    distributed.launch(_train_fold_job, (kwargs,), num_processes, device, timeout)
    entry = registry.get(kwargs["trainer"])
    dataset_name, _ = load_plans(kwargs["dataset"], kwargs["configuration"], kwargs["plans_name"])
    return (paths.trained_model_folder(dataset_name, entry.cls.__name__, kwargs["plans_name"], kwargs["configuration"])
            / f"fold_{kwargs['fold']}")


def _train_fold_job(device: torch.device, kwargs: dict) -> Path:
    """What each process of a multi-process run does (top level: it is pickled to spawned processes)."""
    return _train_fold_here(device=device, **kwargs)


def _check_distributed_launch(dataset: str, configuration: str, trainer: str, plans_name: str, world: int,
                              device: torch.device) -> None:
    """Fail before starting processes on what every process would fail on."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    registry.get(trainer)
    distributed.backend_for(device)
    _, plans = load_plans(dataset, configuration, plans_name)
    batch = PlansManager(plans).get_configuration(configuration).batch_size
    distributed.shard_batch(batch, world, 0, 0.33)  # raises if the batch cannot be split


def collective_timeout(kwargs: dict) -> float:
    """The collective timeout: the override, else the config saved by a resumed run, else the default."""
    value = (kwargs.get("config_overrides") or {}).get("collective_timeout_s")
    if value is None and kwargs.get("continue_training"):
        entry = registry.get(kwargs["trainer"])
        dataset_name, _ = load_plans(kwargs["dataset"], kwargs["configuration"], kwargs["plans_name"])
        saved = (paths.trained_model_folder(dataset_name, entry.cls.__name__, kwargs["plans_name"],
                                            kwargs["configuration"]) / f"fold_{kwargs['fold']}" / CONFIG_FILE)
        if saved.is_file():
            value = TrainingConfig.load(saved).collective_timeout_s
    return float(value if value is not None else DEFAULT_COLLECTIVE_TIMEOUT_S)


def train_fold(dataset: str, configuration: str, fold: int | str, trainer: str = "baseline",
               plans_name: str = DEFAULT_PLANS_NAME, config_overrides: dict | None = None,
               device: torch.device = torch.device("cpu"), continue_training: bool = False,
               validate: bool = True, save_probabilities: bool = False, overwrite: bool = False) -> Path:
    """Train (or continue) one fold in this process, with the checks and the lock of `train`."""
    return train(dataset, configuration, fold, trainer, plans_name, config_overrides, device, continue_training,
                 validate, save_probabilities, num_processes=1, overwrite=overwrite)


def _train_fold_here(dataset: str, configuration: str, fold: int | str, trainer: str = "baseline",
                     plans_name: str = DEFAULT_PLANS_NAME, config_overrides: dict | None = None,
                     device: torch.device = torch.device("cpu"), continue_training: bool = False,
                     validate: bool = True, save_probabilities: bool = False) -> Path:
    """Train (or continue) one fold and run nnU-Net's final validation: what each process does
    (the checks and the lock are `train`'s, in the launching process).

    Args:
        dataset: id or DatasetXXX_Name (preprocessed).
        configuration: e.g. "2d", "3d_fullres".
        fold: a fold of the split (checked by `train`) or "all".
        trainer: registry name (see `dnnunet train --help`).
        plans_name: plans identifier.
        config_overrides: TrainingConfig fields to set (None values are ignored).
        device: torch device.
        continue_training: resume from the latest good checkpoint (and the saved config).
        validate: run the final validation (predicts the validation cases, writes summary.json).
        save_probabilities: keep validation probabilities (needed for ensembling / find-best).

    Returns:
        The fold's output folder.
    """
    entry, trainer_obj = build_trainer(dataset, configuration, fold, trainer, plans_name, device, continue_training)
    fold_folder = Path(trainer_obj.output_folder)
    values = trainer_obj.config.to_dict()  # the trainer's defaults (its registry entry included)
    saved = fold_folder / CONFIG_FILE
    if continue_training and saved.is_file():
        values = TrainingConfig.load(saved).to_dict()
    if (config_overrides or {}).get("diffusion") and values.get("diffusion") is None:
        raise UserInputError(f"diffusion options were given, but {trainer!r} is not a diffusion trainer")
    if (config_overrides or {}).get("semi") and values.get("semi") is None:
        raise UserInputError(f"semi-supervised options (--teacher, --rounds, --semi-option) were given, but {trainer!r} is not a "
                             "semi-supervised trainer (semi_teacher, semi_cotrain, cps)")
    values = merge_config_values(values, config_overrides or {})
    trainer_obj.apply_config(TrainingConfig.from_dict(values))

    main_process = distributed.rank() == 0
    if continue_training:
        checkpoint = None
        if main_process:  # one rank decides, so that all ranks resume from the same file
            for stale in fold_folder.glob(".checkpoint_*.tmp*"):  # left by a kill during a checkpoint write
                stale.unlink()
            checkpoint = find_resume_checkpoint(fold_folder)
        checkpoint = distributed.broadcast_from_rank0(checkpoint)
        if checkpoint is None:
            if main_process:
                logger.warning("no usable checkpoint in %s: starting a new training", fold_folder)
        else:
            logger.info("continuing from %s", checkpoint)
            trainer_obj.load_checkpoint(str(checkpoint))

    logger.info("training %s (%s) on %s, %s fold %s, device %s%s: %d epochs x %d iterations", entry.name,
                entry.cls.__name__, trainer_obj.plans_manager.dataset_name, configuration, fold, trainer_obj.device,
                f" x {distributed.world_size()} processes" if distributed.is_distributed() else "",
                trainer_obj.num_epochs, trainer_obj.num_iterations_per_epoch)
    trainer_obj.run_training()
    if validate:
        logger.info("final validation of %s", fold_folder)
        trainer_obj.run_final_validation(save_probabilities)
    return fold_folder

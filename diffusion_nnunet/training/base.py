"""Our seam to nnunetv2's trainer: every trainer of this project derives from `DnnTrainer`.

What it changes relative to `nnUNetTrainer`, and why:
- hyper-parameters come from a typed `TrainingConfig` resolved against the plans' budget,
  instead of one subclass per value;
- checkpoints are written atomically (temp file + `os.replace`) and every `save_every` epochs
  (default 1), so a crash or SIGKILL loses at most one epoch and never leaves a torn file;
- nnU-Net's console prints go to its log file and to `logging`; the console shows a tqdm bar;
- measured seconds per iteration are written to `training_stats.json` beside the checkpoints,
  so the planner's estimate can be checked;
- optional seeding for reproducible runs;
- data-parallel training on CUDA (NCCL) and on the CPU (gloo): nnU-Net's own DDP path assumes
  one GPU per global rank; here the device, the grad scaler and the DDP wrapper follow the
  requested device and the local rank (see `training/distributed.py` for the launch).
"""
from __future__ import annotations

import logging
import os
import random
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from diffusion_nnunet.configs.inference_spec import InferenceSpec
from diffusion_nnunet.configs.training_config import TrainingConfig
from diffusion_nnunet.training import distributed
from diffusion_nnunet.training.ddp_loss import make_shard_aware
from diffusion_nnunet.training.fold_state import CROSS_VALIDATION_FOLDS  # noqa: F401 - also exported here
from dnnunet_core.atomic import atomic_path, write_json
from dnnunet_core.errors import UserInputError
from planning.plan_sections import training_budget_section
from planning.preprocessing_state import check_splits

logger = logging.getLogger(__name__)

CONFIG_FILE = "training_config.json"
STATS_FILE = "training_stats.json"
LATEST_CHECKPOINT = "checkpoint_latest.pth"
# the checkpoint_latest that a newer one replaced: a resume point if the newest is damaged
PREVIOUS_CHECKPOINT = "checkpoint_previous.pth"


class NonFiniteLossError(UserInputError):
    """The training loss became NaN or infinite: the run stops before it saves such a model.

    A user-facing error (one message, exit code 2): the cause is nearly always the data
    (intensities that overflow in normalisation, an empty or constant image) or the settings
    (a learning rate too high), not the code.
    """


class DnnTrainer(nnUNetTrainer):
    """nnUNetTrainer with a typed config, atomic checkpoints, logging and progress bars.

    The constructor keeps nnU-Net's signature so that nnunetv2's own tools (which re-create the
    trainer from the checkpoint's `init_args`) can instantiate it; the config is applied with
    `apply_config` afterwards.
    """

    show_progress: bool = True
    # the predictor this trainer's models need (configs/inference_spec.py), read by the registry
    predictor_kind: str = "nnunet"
    # DDP's gradient reduction waits for every parameter unless told that some may go unused
    ddp_find_unused_parameters: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cpu")):
        if device.type == "cpu":
            # nnunetv2's augmentation worker processes cost more than they give on a few cores
            # (measured: 0.18 vs 0.13 s/iteration for the demo plan on 2 cores)
            os.environ.setdefault("nnUNet_n_proc_DA", "0")
        with warnings.catch_warnings():
            # under DDP nnU-Net makes a CUDA grad scaler whatever the device (replaced below)
            warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available")
            super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            # nnU-Net sets cuda:<global rank> here whatever the device; use the requested one
            # (the launcher passes cuda:<local rank>, or the CPU)
            local_rank = int(os.environ.get("LOCAL_RANK", self.local_rank))
            self.device = distributed.device_for_rank(device, local_rank)
            self.grad_scaler = torch.GradScaler("cuda") if self.device.type == "cuda" else None
        self.config: TrainingConfig = self.default_config()
        self.seconds_per_iteration: list[float] = []
        self.apply_config(self.config)

    @classmethod
    def default_config(cls) -> TrainingConfig:
        """The config before user overrides: TrainingConfig's defaults plus the registry entry's."""
        from diffusion_nnunet.configs.trainer_registry import overrides_for
        from diffusion_nnunet.configs.training_config import merge_config_values

        return TrainingConfig.from_dict(merge_config_values(TrainingConfig().to_dict(), overrides_for(cls)))

    @property
    def plans_file(self) -> Path:
        """The plans file this trainer's plans came from (named in errors about them)."""
        return Path(self.preprocessed_dataset_folder_base) / f"{self.plans_manager.plans_name}.json"

    def apply_config(self, config: TrainingConfig) -> None:
        """Resolve `config` against the plans' budget and set nnU-Net's attributes from it."""
        cfg = config.resolved(self.configuration_manager.configuration, self.plans_file)
        self.config = cfg
        # recorded in the checkpoint's init_args, so predictors can rebuild the network the config describes
        self.my_init_kwargs["dnnunet_config"] = cfg.to_dict()
        self.num_epochs = cfg.num_epochs
        self.num_iterations_per_epoch = cfg.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = cfg.num_val_iterations_per_epoch
        self.initial_lr = cfg.initial_lr
        self.weight_decay = cfg.weight_decay
        self.oversample_foreground_percent = cfg.oversample_foreground_percent
        self.save_every = cfg.save_every
        self.enable_deep_supervision = cfg.deep_supervision

    # ---------------------------------------------------------------- inference hooks
    @classmethod
    def network_for_inference(cls, plans_manager, configuration_manager, num_input_channels: int,
                              num_output_channels: int, config: TrainingConfig):
        """The network a checkpoint of this trainer holds (config: the checkpoint's)."""
        return cls.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                              num_output_channels, enable_deep_supervision=False)

    @classmethod
    def inference_spec(cls, config: TrainingConfig) -> InferenceSpec:
        """How this trainer's models predict (config: the checkpoint's); the registry entry hands
        it to the predictor (`TrainerEntry.inference_spec`). Plain nnU-Net models: nnU-Net's."""
        return InferenceSpec(predictor=cls.predictor_kind)

    # ---------------------------------------------------------------- logging
    def print_to_log_file(self, *args, also_print_to_console=True, add_timestamp=True):
        super().print_to_log_file(*args, also_print_to_console=False, add_timestamp=add_timestamp)
        if self.local_rank == 0:
            logger.debug(" ".join(str(a) for a in args))

    # ---------------------------------------------------------------- data parallelism
    @property
    def rank(self) -> int:
        """Global rank (nnU-Net calls it `local_rank`, but sets it to the global rank)."""
        return self.local_rank

    def initialize(self):
        """nnU-Net's initialize, with a DDP wrapper that also works on the CPU.

        nnU-Net wraps with `DDP(device_ids=[rank])`, which is CUDA-only and names the wrong GPU on
        a second machine; here nnU-Net builds the bare network and we wrap it for the device.
        """
        if not self.is_ddp:
            return super().initialize()
        self.is_ddp = False
        try:
            super().initialize()
        finally:
            self.is_ddp = True
        self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
        self.network = DistributedDataParallel(
            self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.ddp_find_unused_parameters)
        # rebuilt as a DDP loss: Dice over the global batch, and no zero deep-supervision weight
        # (a parameter without gradient would stall DDP's gradient reduction); made exact for
        # shards of unequal size
        self.loss = make_shard_aware(self._build_loss(), self.batch_size, self.configuration_manager.batch_size,
                                     distributed.world_size())

    def _build_loss(self):
        """nnU-Net's loss, refused where its deep-supervision weights would be 0/0.

        nnU-Net gives the outputs of all but the lowest resolution weights 1, 1/2, 1/4, ..., sets
        the last one to 0 and divides by their sum: with two resolution stages there is a single
        output, its weight is 0, and every loss would be NaN (0/0) from the first iteration.

        Raises:
            UserInputError: the plans' configuration has fewer than 3 resolution stages.
        """
        if self.enable_deep_supervision:
            outputs = len(self._get_deep_supervision_scales())
            if outputs < 2:
                stages = len(self.configuration_manager.pool_op_kernel_sizes)
                raise UserInputError(
                    f"configuration {self.configuration_name!r} of the plans {self.plans_manager.plans_name} "
                    f"({self.plans_manager.dataset_name}) has {stages} resolution stage(s) (patch size "
                    f"{list(self.configuration_manager.patch_size)}): nnU-Net's deep-supervision loss would weight "
                    f"its only output 0/0 and train on NaN. nnU-Net cannot train such a plan; the images (or the "
                    f"budget's patch) are too small: plan with larger images or another configuration")
        return super()._build_loss()

    def _set_batch_size_and_oversample(self):
        """The rank's share of the planned batch (see `distributed.shard_batch`)."""
        if not distributed.is_distributed():
            self.batch_size = self.configuration_manager.batch_size
            return
        shard = distributed.shard_batch(self.configuration_manager.batch_size, distributed.world_size(),
                                        distributed.rank(), self.oversample_foreground_percent)
        self.batch_size = shard.size
        self.oversample_foreground_percent = shard.oversample_foreground_percent
        logger.debug("rank %d: batch %d of %d, foreground oversampling %.2f", distributed.rank(), shard.size,
                     self.configuration_manager.batch_size, shard.oversample_foreground_percent)

    def do_split(self):
        """nnU-Net's split, with a clear error where its 5-fold split cannot be made.

        nnU-Net creates a seeded 5-fold split of the labelled cases on first use; with fewer than
        5 (a partially labelled dataset, say) scikit-learn fails deep inside with a message that
        names neither the dataset nor the way out.
        """
        splits_file = Path(self.preprocessed_dataset_folder_base) / "splits_final.json"
        if self.fold != "all" and not splits_file.is_file():
            from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

            self.dataset_class = self.dataset_class or infer_dataset_class(self.preprocessed_dataset_folder)
            count = len(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
            if count < CROSS_VALIDATION_FOLDS:
                raise UserInputError(
                    f"{self.plans_manager.dataset_name} has {count} labelled training case(s) in "
                    f"{self.preprocessed_dataset_folder}: nnU-Net's {CROSS_VALIDATION_FOLDS}-fold "
                    f"cross-validation needs at least {CROSS_VALIDATION_FOLDS}. "
                    f"Train with -f all (validation then runs on the training cases), or write your own "
                    f"{splits_file}")
        check_splits(splits_file, self.preprocessed_dataset_folder, self.fold)  # issue 15: splits of other data
        return super().do_split()

    def validation_is_sharded(self) -> bool:
        """Whether `perform_actual_validation` splits the cases over ranks (nnU-Net's does; an
        override that does not call it is assumed not to, unless it sets `shards_validation`)."""
        declared = getattr(type(self), "shards_validation", None)
        if declared is not None:
            return bool(declared)
        return type(self).perform_actual_validation is nnUNetTrainer.perform_actual_validation

    def run_final_validation(self, save_probabilities: bool = False) -> None:
        """The final validation on every rank if it is sharded, else once, on rank 0."""
        if not self.is_ddp or self.validation_is_sharded():
            return self.perform_actual_validation(save_probabilities)
        if self.rank == 0:
            with self._without_ddp():
                self.perform_actual_validation(save_probabilities)
        # no barrier: the other ranks have nothing to wait for, and a barrier could time out
        # while rank 0 predicts

    @contextmanager
    def _without_ddp(self):
        """The bare network and is_ddp off: for work that only this rank does (no collectives)."""
        wrapped = self.network
        self.network, self.is_ddp = wrapped.module, False
        try:
            yield
        finally:
            self.network, self.is_ddp = wrapped, True

    # ---------------------------------------------------------------- training step
    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step, split so that subclasses only replace `compute_loss`."""
        data, target = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.compute_loss(data, target)
        self.backward_and_step(loss)
        return {"loss": loss.detach().cpu().numpy()}

    def autocast(self):
        """Mixed precision on CUDA only: on the CPU it is slow, on MPS unsupported (as in nnU-Net)."""
        return torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """nnU-Net's update: backward (through the grad scaler on CUDA), clip the norm at 12, step."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()

    def compute_loss(self, data: torch.Tensor, target) -> torch.Tensor:
        """The training loss of one batch (nnU-Net: Dice + CE of the network's output)."""
        return self.loss(self.network(data), target)

    def _to_device(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        return data, target

    # ---------------------------------------------------------------- training loop
    def on_train_start(self):
        if self.config.seed is not None:
            seed = self.config.seed + self.rank  # global rank: distinct data on every machine
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        elif self.is_ddp:
            # torch starts every process from the same default seed: without this all ranks would
            # draw the same augmentation and diffusion noise
            torch.seed()
        super().on_train_start()
        if self.local_rank == 0:
            self.config.save(Path(self.output_folder) / CONFIG_FILE)

    def run_training(self):
        """nnU-Net's loop with a progress bar and per-iteration timing."""
        self.on_train_start()
        total = self.num_epochs * self.num_iterations_per_epoch
        with tqdm(total=total, initial=self.current_epoch * self.num_iterations_per_epoch, unit="it",
                  desc=f"train {self.__class__.__name__} fold {self.fold}",
                  disable=not self.show_progress or self.local_rank != 0) as bar:
            for _ in range(self.current_epoch, self.num_epochs):
                self.on_epoch_start()
                self.on_train_epoch_start()
                train_outputs, times = [], []
                for i in range(self.num_iterations_per_epoch):
                    distributed.maybe_inject_fault(self.current_epoch * self.num_iterations_per_epoch + i)
                    start = time.perf_counter()
                    train_outputs.append(self.train_step(next(self.dataloader_train)))
                    times.append(time.perf_counter() - start)
                    self._check_finite_loss(train_outputs[-1]["loss"], i)
                    bar.update(1)
                self.seconds_per_iteration.append(float(np.median(times)))
                self.on_train_epoch_end(train_outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val_outputs = [self.validation_step(next(self.dataloader_val))
                                   for _ in range(self.num_val_iterations_per_epoch)]
                    if val_outputs:
                        self.on_validation_epoch_end(val_outputs)
                    else:
                        self.logger.log("mean_fg_dice", float("nan"), self.current_epoch)
                        self.logger.log("dice_per_class_or_region", [], self.current_epoch)
                        self.logger.log("val_losses", float("nan"), self.current_epoch)
                bar.set_postfix(epoch=self.current_epoch, loss=f"{self.logger.get_value('train_losses', -1):.3f}",
                                dice=f"{self.logger.get_value('mean_fg_dice', -1):.3f}")
                self.on_epoch_end()
        self.on_train_end()

    def _check_finite_loss(self, loss, iteration: int) -> None:
        """Stop at the first NaN/Inf training loss, before the epoch's checkpoint is written.

        Raises:
            NonFiniteLossError: naming the epoch, the iteration, the fold folder and what to check.
        """
        value = float(np.mean(loss))
        if np.isfinite(value):
            return
        kept = sorted(p.name for p in Path(self.output_folder).glob("checkpoint_*.pth"))
        raise NonFiniteLossError(
            f"the training loss is {value} at epoch {self.current_epoch + 1}, iteration {iteration + 1} "
            f"(rank {self.rank}) of {self.output_folder}: training stopped, nothing of this epoch was saved"
            f"{'; the checkpoints of the epochs before are kept: ' + ', '.join(kept) if kept else ''}. Check the "
            f"preprocessed images for NaN/Inf or intensities that overflow in normalisation (nnUNet_preprocessed), "
            f"and the learning rate (--lr); resume with --continue (and e.g. a smaller --lr) or start again")

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()  # saves checkpoints, plots progress.png, increments the epoch
        if self.local_rank == 0:
            logger.info("epoch %d/%d: train loss %.4f, val loss %.4f, pseudo Dice %s, %.3f s/iteration",
                        epoch + 1, self.num_epochs, self.logger.get_value("train_losses", -1),
                        self.logger.get_value("val_losses", -1),
                        [round(float(d), 3) for d in self.logger.get_value("dice_per_class_or_region", -1)],
                        self.seconds_per_iteration[-1] if self.seconds_per_iteration else float("nan"))
            self._write_stats()

    def _write_stats(self) -> None:
        budget = training_budget_section(self.configuration_manager.configuration, self.plans_file)
        measured = self.seconds_per_iteration
        write_json({
            "seconds_per_iteration_per_epoch": measured,
            "median_seconds_per_iteration": float(np.median(measured)) if measured else None,
            "estimated_seconds_per_iteration": budget.estimated_seconds_per_iteration,
            "device": str(self.device),
            "num_processes": distributed.world_size(),
            "epochs_done": self.current_epoch,
        }, Path(self.output_folder) / STATS_FILE)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """Write the checkpoint to a temporary file, then move it into place."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        target = Path(filename)
        with atomic_path(target, suffix=".pth") as tmp:
            super().save_checkpoint(str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if target.name == LATEST_CHECKPOINT and target.is_file():
                # keep the last good one until the new one is in place (resume falls back to it)
                os.replace(target, target.with_name(PREVIOUS_CHECKPOINT))

    def on_train_end(self):
        super().on_train_end()  # writes checkpoint_final, removes checkpoint_latest
        previous = Path(self.output_folder) / PREVIOUS_CHECKPOINT
        if self.rank == 0 and previous.is_file():
            previous.unlink()

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self.my_init_kwargs["dnnunet_config"] = self.config.to_dict()  # the resumed run's config, not the old one
        stats = Path(self.output_folder) / STATS_FILE
        if stats.is_file():
            import json

            done = json.loads(stats.read_text()).get("seconds_per_iteration_per_epoch", [])
            self.seconds_per_iteration = list(done[: self.current_epoch])

"""Semi-supervised trainers: diffusion teacher, twin students, multi-round pseudo-labels (methods.md section 7).

- `semi_teacher` (`SemiTeacherTrainer`): pre-trains the two-pathway teacher without labels,
  ``L_rec`` with ``p = softmax(Seg(I))`` on labelled and unlabelled images alike.
- `semi_cotrain` (`SemiCoTrainer`): teacher (from `--teacher`) and a fresh twin student, both
  updated with ``L = lambda(epoch) * L_u + L_s`` (`semi_losses.cotraining_loss`); the model with
  the better pseudo-validation Dice predicts.
- `cps` (`SemiCoTrainer` with no teacher pre-training and R = 0): cross pseudo-supervision without
  the diffusion teacher (with copy-paste by default, like `semi_cotrain`; ``copy_paste = 0``: plain CPS).
  The semi-supervised default since issue 20's benchmark (docs/semi_supervised.md, "Quick start").

"Seg(I)" is one denoiser pass at the noisiest step T-1 from a noised constant (zero) mask: that
is exactly one-step sampling from noise, so the checkpoints are ordinary diffusion models for
`dnnunet predict` (the config's ``diffusion.sampling_steps`` is 1 and the predictor samples in one
step unless `--steps` asks for more). See docs/semi_supervised.md for every choice.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

from diffusion_nnunet.configs.inference_spec import InferenceSpec
from diffusion_nnunet.configs.trainer_registry import register_variant
from diffusion_nnunet.configs.training_config import STRATEGIES, SemiSupervisedConfig, TrainingConfig
from diffusion_nnunet.diffusion.schedule import NoiseSchedule, network_mask_input, x0_from_logits
from diffusion_nnunet.networks.twin import MODEL_NAMES, STUDENT, TEACHER, CoTrainPair, TwinPathwayNet, build_twin
from diffusion_nnunet.training import distributed
from diffusion_nnunet.training.diffusion_trainer import DnnDiffusionTrainer
from diffusion_nnunet.training.lr_warmup import warmup_factor, warmup_iterations
from diffusion_nnunet.training.semi_losses import (
    RoundSettings,
    cotraining_loss,
    ramp_weight,
    reconstruction_loss,
    segmentation_loss,
)
from diffusion_nnunet.training.unlabelled_data import build_unlabelled_loader, images_only
from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)


def resolve_teacher_checkpoint(teacher: str | Path, fold) -> Path:
    """The teacher checkpoint: a .pth file, a fold folder, or a results folder (its ``fold_<fold>``).

    Args:
        teacher: what `--teacher` named.
        fold: the fold being trained (picks ``fold_<fold>`` in a results folder).

    Raises:
        UserInputError: nothing usable there.
    """
    path = Path(teacher).expanduser()
    candidates = [path] if path.is_file() else [
        path / f"fold_{fold}" / "checkpoint_final.pth", path / "checkpoint_final.pth",
        path / f"fold_{fold}" / "checkpoint_latest.pth", path / "checkpoint_latest.pth"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserInputError(f"--teacher {teacher}: no teacher checkpoint found (looked for "
                         f"{', '.join(str(c) for c in candidates)}); train one with `dnnunet train -tr semi_teacher`")


class _SemiBase(DnnDiffusionTrainer):
    """What both semi-supervised trainers share: config, one-pass Seg, the optimisation step, inference."""

    # the student's Rec never gets a gradient, nor does the teacher's Rec without rounds (cps)
    ddp_find_unused_parameters = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise UserInputError(
                f"{self.__class__.__name__}: {self.plans_manager.dataset_name} has region-based labels "
                "(regions_class_order in dataset.json); the semi-supervised trainers work on classes (softmax) "
                f"only. Train the baseline or a diffusion trainer ({', '.join(STRATEGIES)})")
        if self.label_manager.has_ignore_label:
            # their losses (semi_losses.py) take dense labels: a mask of ignored voxels is not carried
            raise UserInputError(
                f"{self.__class__.__name__}: {self.plans_manager.dataset_name} has an ignore label "
                f"({self.label_manager.ignore_label}, sparse annotations); the semi-supervised trainers need "
                f"dense labels. Train the baseline or a diffusion trainer ({', '.join(STRATEGIES)}), which mask "
                "ignored voxels")

    @classmethod
    def default_config(cls) -> TrainingConfig:
        config = super().default_config()
        if config.semi is None:
            config.semi = SemiSupervisedConfig()
        return config

    def apply_config(self, config: TrainingConfig) -> None:
        if config.diffusion is not None and config.diffusion.denoiser != "early":
            # build_twin makes early-fusion Seg and Rec networks; refuse rather than ignore the option
            raise UserInputError(f"{self.__class__.__name__}: --denoiser {config.diffusion.denoiser} is not "
                                 "supported by the semi-supervised trainers (their Seg and Rec networks are "
                                 "early-fusion denoisers); leave --denoiser at early")
        if config.semi is None:
            config.semi = SemiSupervisedConfig()
        super().apply_config(config)
        self.rec_schedule = NoiseSchedule.linear(self.semi.rec_timesteps)

    @property
    def semi(self) -> SemiSupervisedConfig:
        return self.config.semi

    # ---------------------------------------------------------------- inference hooks
    @classmethod
    def inference_spec(cls, config: TrainingConfig) -> InferenceSpec:
        # Seg was trained at the noisiest step: one-step sampling unless a prediction asks for more
        return dataclasses.replace(super().inference_spec(config), self_conditioning=False,
                                   default_steps=config.diffusion.sampling_steps)

    # ---------------------------------------------------------------- Seg(I)
    def segment(self, model: TwinPathwayNet, image: torch.Tensor, random_t: bool = False) -> torch.Tensor:
        """Seg logits of `model` at step T-1 from the noised constant (zero) mask.

        With `random_t` (training with ``seg_random_t``) the step is drawn uniformly per sample
        instead: the constant mask is noised less or more on every call (the authors' Seg).
        """
        zeros = torch.zeros((image.shape[0], model.num_classes, *image.shape[2:]), device=image.device,
                            dtype=image.dtype)
        if random_t:
            t = torch.randint(0, self.schedule.num_steps, (image.shape[0],), device=image.device)
        else:
            t = self.schedule.num_steps - 1
        x_t = self.schedule.q_sample(zeros, t)
        return model.seg_logits(image, network_mask_input(x_t), self.schedule.network_time(t))

    def train_segment(self, model: TwinPathwayNet, image: torch.Tensor) -> torch.Tensor:
        """`segment` as the training losses call it (a random step with ``seg_random_t``)."""
        return self.segment(model, image, random_t=self.semi.seg_random_t)

    def round_settings(self) -> RoundSettings:
        return RoundSettings.from_config(self.semi, self.rec_schedule)

    def _module(self):
        net = self.network.module if self.is_ddp else self.network
        return getattr(net, "_orig_mod", net)

    def _do_i_compile(self) -> bool:
        # with several processes the losses reach the network as closures through its forward
        # (`run_loss`), which torch.compile would have to trace: left uncompiled there
        return super()._do_i_compile() and not distributed.is_distributed()

    def run_loss(self, closure):
        """``closure(network)``: through the DDP wrapper's forward with several processes, which
        sets up the gradient reduction for the backward pass that follows; else directly."""
        return self.network(closure) if self.is_ddp else closure(self._module())

    # ---------------------------------------------------------------- training loop pieces
    def on_train_start(self):
        super().on_train_start()
        self.dataloader_unlabelled = build_unlabelled_loader(self)
        self.num_unlabelled = 0 if self.dataloader_unlabelled is None else self.dataloader_unlabelled.num_cases
        self.num_labelled_train = len(self.do_split()[0])
        if self.dataloader_unlabelled is None:
            logger.info("no unlabelled cases in this dataset: %s trains on the labelled cases only",
                        self.__class__.__name__)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # nnU-Net's poly rate of this epoch
        self._epoch_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._iteration_in_epoch = 0

    def apply_lr_warmup(self) -> float:
        """Scale this epoch's poly rate by the warm-up factor of the coming iteration; return it."""
        n = warmup_iterations(self.semi.lr_warmup_fraction, self.num_epochs * self.num_iterations_per_epoch)
        iteration = self.current_epoch * self.num_iterations_per_epoch + getattr(self, "_iteration_in_epoch", 0)
        factor = warmup_factor(iteration, n)
        if n and iteration <= n:  # once past the warm-up the poly rate stands as nnU-Net set it
            for group, lr in zip(self.optimizer.param_groups, self._epoch_lrs):
                group["lr"] = lr * factor
        self._iteration_in_epoch = getattr(self, "_iteration_in_epoch", 0) + 1
        return factor

    def train_step(self, batch: dict) -> dict:
        """One update on the loss of `semi_loss` (nnU-Net's step: autocast on CUDA, clipping at 12)."""
        self.apply_lr_warmup()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, parts = self.semi_loss(batch)
        self.backward_and_step(loss)
        return {"loss": loss.detach().cpu().numpy(), **parts}

    def semi_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def _next_unlabelled_images(self) -> torch.Tensor | None:
        if getattr(self, "dataloader_unlabelled", None) is None:
            return None
        return images_only(next(self.dataloader_unlabelled)).to(self.device, non_blocking=True)

    def _hard_counts(self, logits: torch.Tensor, seg: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probs = torch.softmax(logits, 1)
        pred = torch.zeros_like(probs).scatter_(1, probs.argmax(1, keepdim=True), 1)
        tp, fp, fn, _ = get_tp_fp_fn_tn(pred, seg, axes=[0] + list(range(2, probs.ndim)))
        return tp.cpu().numpy()[1:], fp.cpu().numpy()[1:], fn.cpu().numpy()[1:]


class SemiTeacherTrainer(_SemiBase):
    """Unsupervised pre-training of the two-pathway teacher: ``L_rec`` only, labels never used."""

    def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision: bool = True):
        return build_twin(configuration_manager, num_input_channels, num_output_channels,
                          self.config.diffusion.time_embed_dim)

    @classmethod
    def network_for_inference(cls, plans_manager, configuration_manager, num_input_channels, num_output_channels,
                              config: TrainingConfig):
        return build_twin(configuration_manager, num_input_channels, num_output_channels,
                          config.diffusion.time_embed_dim)

    def teacher_loss(self, image: torch.Tensor, model: TwinPathwayNet | None = None,
                     training: bool = False) -> torch.Tensor:
        """``L_rec`` of the images from the teacher's own mask p = softmax(Seg(I)) (gradient into Seg)."""
        model = model or self._module()
        logits = self.train_segment(model, image) if training else self.segment(model, image)
        return reconstruction_loss(model.rec_eps, image, x0_from_logits(logits), self.rec_schedule)

    def semi_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        # labelled and unlabelled images are all just images here; draw from each in proportion
        share = self.num_unlabelled / max(self.num_unlabelled + self.num_labelled_train, 1)
        if getattr(self, "dataloader_unlabelled", None) is not None and np.random.rand() < share:
            image = self._next_unlabelled_images()
        else:
            image = images_only(batch).to(self.device, non_blocking=True)
        return self.run_loss(lambda model: self.teacher_loss(image, model, training=True)), {}

    def compute_loss(self, data: torch.Tensor, target, update_sampler: bool = True) -> torch.Tensor:
        """Validation loss: L_rec of the validation images (the target is ignored)."""
        return self.teacher_loss(data)


class SemiCoTrainer(_SemiBase):
    """Teacher and twin student co-trained (see module docstring); `cps` is this with R = 0 and no teacher."""

    @staticmethod
    def _pair_networks(configuration_manager, num_input_channels, num_output_channels, config) -> CoTrainPair:
        dim = config.diffusion.time_embed_dim
        return CoTrainPair(build_twin(configuration_manager, num_input_channels, num_output_channels, dim),
                           build_twin(configuration_manager, num_input_channels, num_output_channels, dim))

    def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision: bool = True):
        return self._pair_networks(configuration_manager, num_input_channels, num_output_channels, self.config)

    @classmethod
    def network_for_inference(cls, plans_manager, configuration_manager, num_input_channels, num_output_channels,
                              config: TrainingConfig):
        return cls._pair_networks(configuration_manager, num_input_channels, num_output_channels, config)

    # ---------------------------------------------------------------- start: the teacher
    def on_train_start(self):
        if self.current_epoch == 0 and self.semi.require_teacher and not self.semi.teacher:
            raise UserInputError(f"{self.__class__.__name__} starts from a pre-trained teacher: pass --teacher "
                                 "MODEL_FOLDER (a `semi_teacher` results folder), or use -tr cps")
        super().on_train_start()
        if self.current_epoch == 0 and self.semi.teacher:
            self.load_teacher(self.semi.teacher)

    def load_teacher(self, teacher: str | Path) -> None:
        """Initialise the teacher from a `semi_teacher` (or co-trained) checkpoint."""
        path = resolve_teacher_checkpoint(teacher, self.fold)
        weights = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
        if any(k.startswith("teacher.") for k in weights):  # a co-trained model: take its teacher
            weights = {k[len("teacher."):]: v for k, v in weights.items() if k.startswith("teacher.")}
        try:
            self._module().teacher.load_state_dict(weights)
        except RuntimeError as err:
            raise UserInputError(f"{path} does not fit this dataset's plans (a teacher from another dataset, "
                                 f"configuration or plans?): {str(err).splitlines()[0]}") from err
        logger.info("teacher initialised from %s", path)

    # ---------------------------------------------------------------- loss
    def semi_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        unlabelled = self._next_unlabelled_images()
        lam = ramp_weight(self.current_epoch, self.num_epochs, self.semi.ramp_fraction, self.semi.whole_run_ramp)

        def loss(pair: CoTrainPair):
            terms = cotraining_loss(lambda x: self.train_segment(pair.teacher, x),
                                    lambda x: self.train_segment(pair.student, x),
                                    pair.teacher.rec_eps, data, target, unlabelled, self.round_settings(), lam)
            return terms.total, terms.supervised, terms.unsupervised

        total, supervised, unsupervised = self.run_loss(loss)
        return total, {"supervised": supervised.cpu().numpy(), "unsupervised": unsupervised.cpu().numpy()}

    def compute_loss(self, data: torch.Tensor, target, update_sampler: bool = True) -> torch.Tensor:
        """Validation loss: the selected model's Dice (+ CE) against the labels."""
        seg = target[0] if isinstance(target, (list, tuple)) else target
        return segmentation_loss(self.segment(self._module().chosen, data), seg, self.semi.ce_weight)

    # ---------------------------------------------------------------- validation and model choice
    def validation_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        seg = target[0] if isinstance(target, (list, tuple)) else target
        pair = self._module()
        out = {}
        for index, model in enumerate(pair.models()):
            logits = self.segment(model, data)
            out[MODEL_NAMES[index]] = self._hard_counts(logits, seg)
            out[f"loss_{MODEL_NAMES[index]}"] = float(segmentation_loss(logits, seg, self.semi.ce_weight))
        return out

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        """Update each model's Dice average, select the better one, log it as nnU-Net's pseudo Dice."""
        pair = self._module()
        counts = {name: [np.sum([o[name][i] for o in val_outputs], 0) for i in range(3)] for name in MODEL_NAMES}
        if self.is_ddp:  # every rank chooses from the counts of all ranks, so all choose alike
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, counts)
            counts = {name: [sum(g[name][i] for g in gathered) for i in range(3)] for name in MODEL_NAMES}
        dice = []
        for name in MODEL_NAMES:
            tp, fp, fn = counts[name]
            per_class = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
            dice.append(float(np.mean(per_class)))
        m = self.semi.selection_momentum
        ema = pair.val_dice_ema
        for i, d in enumerate(dice):
            ema[i] = d if math.isnan(float(ema[i])) else m * float(ema[i]) + (1 - m) * d
        pair.select(STUDENT if float(ema[STUDENT]) > float(ema[TEACHER]) else TEACHER)
        chosen = MODEL_NAMES[int(pair.selected)]
        logger.info("pseudo-validation Dice: teacher %.4f, student %.4f (averages %.4f / %.4f): %s predicts",
                    dice[TEACHER], dice[STUDENT], float(ema[TEACHER]), float(ema[STUDENT]), chosen)
        self.print_to_log_file(f"semi: Dice teacher {dice[TEACHER]:.4f} student {dice[STUDENT]:.4f}; selected {chosen}")
        merged = [{"loss": o[f"loss_{chosen}"], "tp_hard": o[chosen][0], "fp_hard": o[chosen][1],
                   "fn_hard": o[chosen][2]} for o in val_outputs]
        super().on_validation_epoch_end(merged)


def _register():
    diffusion = {"strategy": "standard", "sampling_steps": 1}
    teacher = register_variant(SemiTeacherTrainer, "semi_teacher", "DnnSemiTeacherTrainer",
                               description="semi-supervised: teacher pre-training without labels (L_rec)",
                               diffusion=diffusion, deep_supervision=False)
    cotrain = register_variant(SemiCoTrainer, "semi_cotrain", "DnnSemiCoTrainer",
                               description="semi-supervised: teacher + twin student, R reconstruction rounds "
                                           "(--teacher, --rounds)",
                               diffusion=diffusion, deep_supervision=False)
    cps = register_variant(SemiCoTrainer, "cps", "DnnSemiCPSTrainer",
                           description="semi-supervised, the recommended default: cross pseudo-supervision with "
                                       "copy-paste, without the diffusion teacher (no pre-training, no rounds)",
                           diffusion=diffusion, deep_supervision=False,
                           semi={"rounds": 0, "require_teacher": False})
    return teacher, cotrain, cps


SEMI_TRAINERS = _register()

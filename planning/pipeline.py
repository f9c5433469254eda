"""plan-and-preprocess: validate -> fingerprint -> plans (with budget) -> preprocessed data."""
from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path

from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from dnnunet_core import paths
from dnnunet_core.atomic import write_json
from dnnunet_core.errors import UserInputError
from dnnunet_core.paths import find_dataset_folder
from dnnunet_core.quiet import nnunet_output_to_log
from planning.budget import ComputeBudget
from planning.checks import validate_raw_dataset
from planning.fingerprint import extract_fingerprint
from planning.plan_checks import refuse_untrainable_plans, warn_about_trained_models
from planning.plan_sections import training_budget_section
from planning.planner import budgeted
from planning.planner_presets import DEFAULT_PLANNER, get_planner_preset, plans_name_for
from planning.preprocessing_state import mark_complete, mark_incomplete
from planning.unlabelled import extract_fingerprint_partial, find_unlabelled_cases, preprocess_partial

logger = logging.getLogger(__name__)


class _AtomicSave:
    """Mixin before a budgeted planner: writes the plans file atomically, keeping configurations
    planned earlier (as nnU-Net does).

    Before writing, the configurations to preprocess are checked to be trainable by nnU-Net's
    pipeline, and a warning names the trained models whose plans are rewritten.
    """

    required_configurations: list[str] | None = None  # None: every planned one (but cascade/lowres)

    def save_plans(self, plans):
        import json

        recursive_fix_for_json_export(plans)
        required = self.required_configurations or [c for c in plans["configurations"]
                                                    if "cascade" not in c and "lowres" not in c]
        refuse_untrainable_plans(plans, required, self.dataset_name)
        plans_file = paths.preprocessed() / self.dataset_name / f"{self.plans_identifier}.json"
        if plans_file.is_file():
            old = json.loads(plans_file.read_text())["configurations"]
            plans["configurations"].update({k: v for k, v in old.items() if k not in plans["configurations"]})
        warn_about_trained_models(self.dataset_name, self.plans_identifier, plans)
        write_json(plans, plans_file)
        logger.info("Plans written to %s", plans_file)


@functools.cache
def _atomic_planner(planner_class: type) -> type:
    """`_AtomicSave` over the budgeted nnunetv2 planner class."""
    return type(f"_Atomic{planner_class.__name__}", (_AtomicSave, budgeted(planner_class)), {})


def plan_and_preprocess(dataset: str, budget: ComputeBudget, configurations: list[str] | None = None,
                        plans_name: str | None = None, num_processes: int = 1, validate: bool = True,
                        preprocess: bool = True, planner: str = DEFAULT_PLANNER) -> dict:
    """Run the first stage for one dataset and return the plans.

    Args:
        dataset: id or DatasetXXX_Name under nnUNet_raw.
        budget: compute budget for the planner.
        configurations: configurations to preprocess (default: all that were planned, except the
            cascade, which nnU-Net only needs on large 3D images).
        plans_name: plans identifier; None: the planner preset's name for this budget
            (`planning.planner_presets`: dnnunetPlans, nnUNetResEncUNetMPlans_cpu-small, ...).
        num_processes: worker processes for fingerprinting and preprocessing.
        validate: check the raw data first (recommended: stops before any compute on bad files).
        preprocess: also write the preprocessed data.
        planner: a `-pl` preset name (`planning.planner_presets.PLANNERS`).

    Raises:
        UserInputError: unknown planner, bad processes count, bad raw data, unknown configurations.
    """
    preset = get_planner_preset(planner)  # before any work: a typo fails at once
    plans_name = plans_name or plans_name_for(preset, budget)
    if num_processes < 1:
        raise UserInputError(f"the number of processes must be at least 1, got {num_processes}")
    folder = find_dataset_folder(paths.raw(), dataset)
    name = folder.name
    if validate:
        report = validate_raw_dataset(folder, num_processes=num_processes)
        logger.info("%s: %d training cases passed the input checks", name, report.num_cases)
    # partially labelled datasets (semi-supervised): nnunetv2 would read a label for every image
    unlabelled = find_unlabelled_cases(folder)
    if unlabelled:
        extract_fingerprint_partial(name, unlabelled, num_processes=num_processes)
    else:
        extract_fingerprint(name, num_processes=num_processes)
    logger.info("Planning %s with the %s planner and the %s budget: plans %s", name, preset.name, budget.name,
                plans_name)
    nnunet_planner = _atomic_planner(preset.planner_class)(name, budget, plans_name=plans_name)
    nnunet_planner.required_configurations = configurations if preprocess else None
    with nnunet_output_to_log(logger):
        plans = nnunet_planner.plan_experiment()
    for cfg, plan in plans["configurations"].items():
        tb = training_budget_section(plan, paths.preprocessed() / name / f"{plans_name}.json")
        if tb.present:
            logger.info("%s: patch %s, batch %d, %d stages, ~%.3g s/iteration, %d epochs x %d iterations", cfg,
                        plan["patch_size"], plan["batch_size"], plan["architecture"]["arch_kwargs"]["n_stages"],
                        tb.estimated_seconds_per_iteration, tb.num_epochs, tb.num_iterations_per_epoch)
    if preprocess:
        wanted = configurations or [c for c in plans["configurations"] if "cascade" not in c and "lowres" not in c]
        unknown = [c for c in wanted if c not in plans["configurations"]]
        if unknown:
            raise UserInputError(f"configuration(s) {unknown} not in the plans; planned: {list(plans['configurations'])}")
        # the labels first: a configuration's completion marker then also vouches for them
        _copy_ground_truth(folder, paths.preprocessed() / name / "gt_segmentations")
        expected = _labelled_cases(name, unlabelled)
        for cfg, sharing in _by_data_folder(plans, wanted).items():
            logger.info("Preprocessing %s / %s", name, " + ".join([cfg, *sharing]))
            mark_incomplete(name, cfg, plans_name)
            with nnunet_output_to_log(logger):
                if unlabelled:
                    preprocess_partial(name, cfg, plans_name, unlabelled, num_processes)
                else:
                    DefaultPreprocessor(verbose=False).run(name, cfg, plans_name, num_processes)
            for done in (cfg, *sharing):
                mark_complete(name, done, plans_name, expected)  # last: training refuses data without it
    return plans


def _by_data_folder(plans: dict, configurations: list[str]) -> dict[str, list[str]]:
    """{configuration to preprocess: the requested ones that share its data folder}: nnU-Net's
    3d_cascade_fullres inherits 3d_fullres's data identifier, whose data is written once."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager, groups, first_of = PlansManager(plans), {}, {}
    for cfg in dict.fromkeys(configurations):
        identifier = manager.get_configuration(cfg).data_identifier
        if identifier in first_of:
            groups[first_of[identifier]].append(cfg)
        else:
            first_of[identifier] = cfg
            groups[cfg] = []
    return groups


def _labelled_cases(dataset_name: str, unlabelled: dict) -> list[str]:
    """The cases nnU-Net's preprocessor writes into a configuration's data folder."""
    import json

    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    dataset_json = json.loads((paths.preprocessed() / dataset_name / "dataset.json").read_text())
    cases = get_filenames_of_train_images_and_targets(str(paths.raw() / dataset_name), dataset_json)
    return sorted(c for c in cases if c not in unlabelled)


def _copy_ground_truth(raw_folder: Path, target: Path) -> None:
    """nnU-Net's final validation reads the training labels from here (as nnUNetv2_preprocess does)."""
    target.mkdir(parents=True, exist_ok=True)
    for label in (raw_folder / "labelsTr").iterdir():
        if label.is_file() and not label.name.startswith("."):
            shutil.copy2(label, target / label.name)


def preprocessed_plans_file(dataset_name: str, plans_name: str) -> Path:
    """Path of a plans file, with a clear error if plan-and-preprocess has not run."""
    f = paths.preprocessed() / dataset_name / f"{plans_name}.json"
    if not f.is_file():
        # other planners' plans (-pl ResEncM ...) have other names: name them, so -p is an easy fix
        others = sorted(g.stem for g in f.parent.glob("*Plans*.json")) if f.parent.is_dir() else []
        hint = f"; this dataset has plans {', '.join(others)} (give one with -p)" if others else ""
        raise UserInputError(f"{f} does not exist: run `dnnunet plan-and-preprocess -d {dataset_name}` first{hint}")
    return f

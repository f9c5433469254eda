"""benchmarks/semi_supervised.py: the methods of the teacher-share benchmark mean what their names say."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from diffusion_nnunet.configs.training_config import SemiSupervisedConfig, TrainingConfig, merge_config_values
from diffusion_nnunet.training.semi_presets import PRESETS

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "semi_supervised.py"
_spec = importlib.util.spec_from_file_location("semi_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _config(semi: dict) -> SemiSupervisedConfig:
    config = TrainingConfig.from_dict(merge_config_values(TrainingConfig(semi=SemiSupervisedConfig()).to_dict(),
                                                          {"semi": semi}))
    config.validate()
    return config.semi


def test_authors_methods_carry_the_preset_and_their_r():
    for r in (3, 5):
        semi = bench.semi_values(f"semi_authors_r{r}")
        assert semi == {**PRESETS["authors"], "rounds": r}
        assert bench.parse_method(f"semi_authors_r{r}")["trainer"] == "semi_cotrain"
    cps = bench.semi_values("cps_authors")
    assert "rounds" not in cps and cps["ce_weight"] == 0.0 and cps["seg_random_t"] is True
    assert bench.semi_values("semi_r1_cp") == {"copy_paste": bench.COPY_PASTE_BOX, "rounds": 1}
    assert bench.semi_values("cps") == {"copy_paste": 0.0}
    assert bench.semi_values("semi_authors_r3_cp")["copy_paste"] == bench.COPY_PASTE_BOX


@pytest.mark.parametrize("factor", list(bench.ABLATIONS))
def test_each_ablation_switches_exactly_its_factor_back_to_our_default(factor):
    preset = _config(bench.semi_values("semi_authors_r3"))
    ablated = _config(bench.semi_values(f"semi_authors_r3_no_{factor}"))
    defaults = SemiSupervisedConfig()
    changed = {k for k in vars(preset) if getattr(preset, k) != getattr(ablated, k)}
    assert changed == set(bench.ABLATIONS[factor])
    for key in changed:
        assert getattr(ablated, key) == getattr(defaults, key) != getattr(preset, key)


def test_unknown_methods_and_slices():
    for bad in ("semi_authors_r3_no_everything", "semi_authors_rx", "cps_friends", "semi_authors_r3_no_warmup_no_warmup"):
        assert bench.parse_method(bad) is None
    assert bench.parse_method("baseline")["trainer"] == "baseline"
    assert bench._generator_and_classes("synthetic-us2d:lesion") == ("synthetic-us2d", ["lesion"])
    assert bench._generator_and_classes("mni-tissue2d") == ("mni-tissue2d", None)
    ids = {bench._dataset_id(name, f) for name in bench.DATASET_IDS for f in (0.1, 0.2)}
    assert len(ids) == 2 * len(bench.DATASET_IDS)  # every slice and fraction its own dataset


def test_report_shows_cost_against_the_baseline():
    entry = lambda s: {"test": {"dice": 0.8, "hd95": 1.0, "nsd": 0.9}, "validation_dice": 0.8, "train_seconds": 10,
                       "median_seconds_per_iteration": s}
    results = {"x": {"dataset": "synthetic-us2d:lesion", "labelled_fraction": 0.1, "labelled_cases": 6,
                     "unlabelled_cases": 54, "epochs": 1, "iterations": 2,
                     "methods": {"baseline": entry(0.1), "semi_authors_r3": entry(0.85)}}}
    text = bench.render_markdown(results)
    assert "| x baseline |" in text and "| 0.850 | 8.5 |" in text and "| 0.100 | 1.0 |" in text

"""A model's inference defaults (diffusion_nnunet.inference.inference_defaults)."""
from __future__ import annotations

import threading

import pytest

from diffusion_nnunet.inference.inference_defaults import (
    default_start_step,
    read_inference_defaults,
    update_inference_defaults,
)
from dnnunet_core.errors import InvalidDataError


def test_update_keeps_the_other_keys(tmp_path):
    assert read_inference_defaults(tmp_path) == {}
    update_inference_defaults(tmp_path, "review_flag", {"score": "entropy_foreground", "threshold": 0.3})
    update_inference_defaults(tmp_path, "pd_ddpm", {"start_step": 2, "source": "find-best"})
    update_inference_defaults(tmp_path, "pd_ddpm", {"start_step": 0, "source": "find-best again"})
    assert read_inference_defaults(tmp_path) == {
        "review_flag": {"score": "entropy_foreground", "threshold": 0.3},
        "pd_ddpm": {"start_step": 0, "source": "find-best again"}}


def test_concurrent_updates_keep_every_key(tmp_path):
    # find-best and fit-review-flag on one model at once: neither overwrites the other's key
    threads = [threading.Thread(target=update_inference_defaults, args=(tmp_path, f"key{i}", i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert read_inference_defaults(tmp_path) == {f"key{i}": i for i in range(8)}


def test_start_step_from_find_best_before_the_plans(tmp_path):
    plans = {"diffusion": {"timesteps": 5, "start_step": 1, "start_step_source": "planner"}}
    assert default_start_step(tmp_path, plans) == 1  # no defaults yet: the planner's
    update_inference_defaults(tmp_path, "pd_ddpm", {"start_step": 3, "source": "find-best"})
    assert default_start_step(tmp_path, plans) == 3
    assert default_start_step(tmp_path / "other", {}) is None


def test_a_broken_file_names_itself(tmp_path):
    (tmp_path / "inference_defaults.json").write_text("{not json")
    with pytest.raises(InvalidDataError, match="inference_defaults.json"):
        read_inference_defaults(tmp_path)

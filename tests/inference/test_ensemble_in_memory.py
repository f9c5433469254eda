"""predict-ensemble in memory writes what the folder-wide disk path writes (issue 17, item 3)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffusion_nnunet.inference.combined import predict_with_ensemble

pytestmark = pytest.mark.slow


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_in_memory_predict_ensemble_writes_the_files_of_the_disk_path(env, recycle_model, tmp_path):
    raw, model = env["raw"], env["model"]
    kwargs = {"start_step": 1, "num_samples": 2, "seed": 5, "device": torch.device("cpu"), "use_mirroring": True}
    disk = predict_with_ensemble(model, recycle_model, raw / "imagesTs", tmp_path / "disk", in_memory=False, **kwargs)
    memory = predict_with_ensemble(model, recycle_model, raw / "imagesTs", tmp_path / "memory", **kwargs)
    (memory["nnunet"] / "stale_case.nii.gz").write_bytes(b"an older run's case")
    again = predict_with_ensemble(model, recycle_model, raw / "imagesTs", tmp_path / "memory", **kwargs)
    assert not (again["nnunet"] / "stale_case.nii.gz").exists(), "a new run replaces the folders whole"
    for name in ("nnunet", "pd_ddpm", "ensemble"):
        files = _files(disk[name])
        assert files == _files(memory[name]) and any(f.endswith(".npz") for f in files)
        if name == "pd_ddpm":
            assert any(f.startswith("uncertainty/") for f in files)
        for f in files:
            a, b = disk[name] / f, memory[name] / f
            if f.endswith(".nii.gz"):
                np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a))),
                                              sitk.GetArrayFromImage(sitk.ReadImage(str(b))), err_msg=f"{name}/{f}")
            elif f.endswith(".npz"):
                np.testing.assert_array_equal(np.load(a)["probabilities"], np.load(b)["probabilities"],
                                              err_msg=f"{name}/{f}")
            elif f.endswith(".pkl"):
                assert pickle.loads(a.read_bytes()).keys() == pickle.loads(b.read_bytes()).keys()
            elif f == "predict_args.json":
                args_a, args_b = json.loads(a.read_text()), json.loads(b.read_text())
                if name == "ensemble":  # the same weights, of the run's own two folders
                    assert args_a.pop("ensemble_of") == [str(disk[n].absolute()) for n in ("pd_ddpm", "nnunet")]
                    assert args_b.pop("ensemble_of") == [str(memory[n].absolute()) for n in ("pd_ddpm", "nnunet")]
                    assert args_a == args_b
                    continue
                # the same arguments; only the pre-segmentation folder (OUT/nnunet) differs
                assert args_a["diffusion"].pop("presegmentation", "") == str(disk["nnunet"]) or name == "nnunet"
                assert args_b["diffusion"].pop("presegmentation", "") == str(memory["nnunet"]) or name == "nnunet"
                assert args_a == args_b
            elif f.endswith(".json"):
                assert json.loads(a.read_text()) == json.loads(b.read_text()), f"{name}/{f}"

"""Model zips (fast, no training): nnU-Net's layout both ways, and an install that never replaces an
installed model silently nor leaves a half-installed folder."""
from __future__ import annotations

import json
import zipfile

import pytest

from diffusion_nnunet.cli.main import main
from diffusion_nnunet.model_sharing import export_model, install_model
from dnnunet_core.errors import UserInputError

DATASET = "Dataset987_Fake"


def fake_model(results, trainer="DnnBaselineTrainer", plans="dnnunetPlans", configuration="2d", folds=(0,),
               version="1"):
    """A model folder with every file a trained one holds (contents are stand-ins)."""
    model = results / DATASET / f"{trainer}__{plans}__{configuration}"
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json", "inference_defaults.json"):
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_text(json.dumps({"name": name, "version": version}))
    for f in folds:
        fold = model / f"fold_{f}"
        (fold / "validation").mkdir(parents=True)
        for name in ("checkpoint_final.pth", "checkpoint_best.pth", "debug.json", "progress.png",
                     "training_config.json", "training_stats.json", "training_log_x.txt", "validation/summary.json",
                     "validation/case_1.nii.gz", "validation/case_1.npz"):
            (fold / name).write_text(f"{name} {version}")
    return model


def test_export_writes_nnunets_layout_with_our_files(nnunet_dirs, tmp_path):
    results = nnunet_dirs["nnUNet_results"]
    model = fake_model(results, folds=(0, 1))
    names = export_model([model], tmp_path / "m.zip")
    prefix = f"{DATASET}/{model.name}/"
    assert sorted(names) == sorted(prefix + n for n in [
        "plans.json", "dataset.json", "dataset_fingerprint.json", "inference_defaults.json",
        *[f"fold_{f}/{x}" for f in (0, 1) for x in ("checkpoint_final.pth", "debug.json", "progress.png",
                                                      "training_config.json", "training_stats.json",
                                                      "validation/summary.json")]])
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        assert sorted(zf.namelist()) == sorted(names)
    # the cross-validation predictions on request (without npz/pkl, as nnU-Net)
    names = export_model([model], tmp_path / "cv.zip", folds=[1], export_crossval_predictions=True)
    assert prefix + "fold_1/validation/case_1.nii.gz" in names and not any(n.endswith(".npz") for n in names)
    assert not any("fold_0" in n for n in names)
    # through the CLI, by dataset / trainer / plans; an existing zip is not replaced silently
    assert main(["export-model", "-d", "987", "-c", "2d", "-o", str(tmp_path / "cli.zip")]) == 0
    assert main(["export-model", "-d", "987", "-o", str(tmp_path / "cli.zip")]) == 2
    assert main(["export-model", "-d", "987", "-o", str(tmp_path / "cli.zip"), "--overwrite"]) == 0


def test_export_names_every_missing_piece_at_once(nnunet_dirs, tmp_path):
    results = nnunet_dirs["nnUNet_results"]
    model = fake_model(results)
    (model / "dataset.json").unlink()
    with pytest.raises(UserInputError) as err:
        export_model([model, results / DATASET / "nope"], tmp_path / "m.zip", folds=[0, 3])
    message = str(err.value)
    assert "dataset.json: missing" in message and "fold_3: checkpoint_final.pth missing" in message
    assert "nope: no such model folder" in message
    assert not (tmp_path / "m.zip").exists()


def test_install_refuses_an_installed_model_and_overwrite_replaces_it(nnunet_dirs, tmp_path):
    source = fake_model(tmp_path / "elsewhere")
    export_model([source], tmp_path / "v1.zip")
    results = nnunet_dirs["nnUNet_results"]
    installed = install_model(tmp_path / "v1.zip")
    target = results / DATASET / source.name
    assert installed == [target]
    assert (target / "fold_0" / "training_config.json").read_text() == "training_config.json 1"
    # a second version of the same model: refused, the installed one untouched
    (tmp_path / "elsewhere2").mkdir()
    export_model([fake_model(tmp_path / "elsewhere2", version="2")], tmp_path / "v2.zip")
    with pytest.raises(UserInputError, match=f"already installed \\(pass --overwrite to replace\\): {target}"):
        install_model(tmp_path / "v2.zip")  # refused before anything is extracted
    assert main(["install-model", str(tmp_path / "v2.zip")]) == 2
    assert (target / "plans.json").read_text() == json.dumps({"name": "plans.json", "version": "1"})
    assert main(["install-model", str(tmp_path / "v2.zip"), "--overwrite"]) == 0
    assert (target / "fold_0" / "checkpoint_final.pth").read_text() == "checkpoint_final.pth 2"
    assert sorted(p.name for p in (results / DATASET).iterdir()) == [source.name]  # nothing left aside
    assert not any(p.name.startswith(".") for p in results.iterdir())


def test_a_failed_install_leaves_nothing_half_installed(nnunet_dirs, tmp_path, monkeypatch):
    source = fake_model(tmp_path / "src")
    export_model([source], tmp_path / "m.zip")
    results = nnunet_dirs["nnUNet_results"]

    def extract_some_then_fail(self, path=None, members=None, pwd=None):
        self.extract(self.namelist()[0], path)
        raise OSError("disk full")

    extractall = zipfile.ZipFile.extractall
    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_some_then_fail)
    with pytest.raises(OSError, match="disk full"):
        install_model(tmp_path / "m.zip")
    assert list(results.iterdir()) == []  # neither the model folder nor the staging folder
    monkeypatch.setattr(zipfile.ZipFile, "extractall", extractall)
    install_model(tmp_path / "m.zip")
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    # with --overwrite, a failed install keeps the installed model
    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_some_then_fail)
    with pytest.raises(OSError):
        install_model(tmp_path / "m.zip", overwrite=True)
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before


def test_install_refuses_foreign_unsafe_and_incomplete_zips(nnunet_dirs, tmp_path):
    def make(name, members):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            for m in members:
                zf.writestr(m, "x")
        return tmp_path / name

    cases = {
        "unsafe.zip": (["../evil.txt", f"{DATASET}/M__p__2d/plans.json"], "unsafe member name"),
        "foreign.zip": (["notes/readme.txt"], "not under a DatasetXXX_Name folder"),
        "incomplete.zip": ([f"{DATASET}/T__p__2d/plans.json"], "has no dataset.json"),
    }
    for name, (members, expected) in cases.items():
        with pytest.raises(UserInputError, match=expected):
            install_model(make(name, members))
    with pytest.raises(UserInputError, match="fold_\\*/checkpoint"):
        install_model(tmp_path / "incomplete.zip")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(UserInputError, match="not a zip file"):
        install_model(tmp_path / "text.zip")
    assert list(nnunet_dirs["nnUNet_results"].iterdir()) == []


def test_nnunetv2_installs_our_zip_and_we_install_nnunetv2s(nnunet_dirs, tmp_path):
    """The layout both ways: nnunetv2's installer extracts our zip to the same tree as ours, and a
    zip written by nnunetv2's export (of a stock-layout model folder) installs with ours."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model
    from nnunetv2.model_sharing.model_import import install_model_from_zip_file

    results = nnunet_dirs["nnUNet_results"]
    source = fake_model(tmp_path / "src")
    export_model([source], tmp_path / "ours.zip")
    install_model_from_zip_file(str(tmp_path / "ours.zip"))
    stock_tree = sorted(p.relative_to(results) for p in results.rglob("*"))
    for p in sorted(results.iterdir()):
        import shutil

        shutil.rmtree(p)
    install_model(tmp_path / "ours.zip")
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == stock_tree
    # nnunetv2's export of a stock model folder, installed by us into another results folder
    stock = fake_model(results, trainer="nnUNetTrainer", plans="nnUNetPlans", configuration="3d_fullres")
    export_pretrained_model(987, str(tmp_path / "stock.zip"), configurations=("3d_fullres",), folds=(0,))
    other = tmp_path / "other_results"
    installed = install_model(tmp_path / "stock.zip", results=other)
    assert installed == [other / DATASET / stock.name]
    for name in ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth", "fold_0/progress.png"):
        assert (other / DATASET / stock.name / name).read_bytes() == (stock / name).read_bytes()

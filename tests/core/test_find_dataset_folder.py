"""find_dataset_folder: a dataset id or folder name resolved under nnU-Net's folders."""
from __future__ import annotations

import pytest

from dnnunet_core.errors import UserInputError
from dnnunet_core.paths import find_dataset_folder
from tests.helpers import make_dataset


def test_find_dataset_folder_by_id_and_name(tmp_path):
    make_dataset(tmp_path, name="Dataset501_Liver")
    (tmp_path / "Dataset005_Prostate").mkdir()
    assert find_dataset_folder(tmp_path, 501) == tmp_path / "Dataset501_Liver"
    assert find_dataset_folder(tmp_path, "501") == tmp_path / "Dataset501_Liver"
    assert find_dataset_folder(tmp_path, "5") == tmp_path / "Dataset005_Prostate"
    assert find_dataset_folder(tmp_path, "Dataset501_Liver") == tmp_path / "Dataset501_Liver"


def test_find_dataset_folder_unknown_id_lists_existing(tmp_path):
    (tmp_path / "Dataset501_Liver").mkdir()
    (tmp_path / "Dataset005_Prostate").mkdir()
    with pytest.raises(UserInputError) as info:
        find_dataset_folder(tmp_path, 777)
    msg = str(info.value)
    assert "777" in msg and "Dataset005_Prostate" in msg and "Dataset501_Liver" in msg
    with pytest.raises(UserInputError, match="Dataset501_Liver"):
        find_dataset_folder(tmp_path, "Dataset501_Kidney")


def test_find_dataset_folder_empty_or_missing_root(tmp_path):
    with pytest.raises(UserInputError, match="empty"):
        find_dataset_folder(tmp_path, 1)
    with pytest.raises(UserInputError, match="does not exist"):
        find_dataset_folder(tmp_path / "nope", 1)
    with pytest.raises(UserInputError, match="not a dataset id"):
        find_dataset_folder(tmp_path, "liver")

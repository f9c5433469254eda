"""Bad-input checks for nnU-Net raw datasets, run before any heavy compute.

Every check names the offending file and says what is wrong with it. Problems are collected
first and raised together as one `InvalidDataError`, one ``file: problem`` line each, so that
users can fix everything in one go instead of re-running planning once per broken file.

Modules: `dataset_json` (dataset.json), `layout` (folders and file names), `files` (header and
voxel reads), `geometry`, `cases` (per-case content checks), `labels` (label voxels), `problems`
(collecting and raising), `runner` (the process pool, `ValidationReport`), `raw_dataset`
(`validate_raw_dataset`).

What is checked (see `validate_raw_dataset`; the predict-time checks, which share the file
and geometry checks, live with inference, in ``inference/input_checks.py``):

* ``dataset.json``: present, valid JSON (the line is named), required keys and their types,
  labels as nnU-Net v2 needs them (background 0, consecutive, ignore label, regions).
* folder layout: ``imagesTr``/``labelsTr`` present and non-empty, ``CASE_XXXX`` channel file
  names, every case has every channel and a label, ``numTraining`` matches, stray files.
  Partially labelled datasets (semi-supervised training): an image in ``imagesTr`` without a
  label file is accepted as *unlabelled* only when dataset.json declares it in
  ``"unlabelled": [case ids]`` or opts in with ``"allow_unlabelled": true``; otherwise it is
  reported as a missing label, with that hint.
* file contents: unreadable or truncated files, shape and geometry (spacing, origin, direction)
  agreement between channels and between image and label, label values and label data type,
  NaN/Inf voxels in images.

Tolerances: spacing uses nnU-Net's own test (``np.allclose`` defaults, relative 1e-5). nnU-Net
only *warns* about origin and direction mismatches; we treat them as errors (with tolerances
that absorb the float32 rounding of NIfTI headers: origin 1e-3 mm, direction cosines 1e-4),
because an image and label in different physical places or orientations usually means the
label does not belong to the voxels, which silently ruins a training run.

Headers are read with SimpleITK (``ReadImageInformation``, cheap). Voxels of NIfTI files are
read with nibabel, because ITK's NIfTI reader silently turns NaN/Inf into 0 and zero-fills
truncated files; other formats are read with SimpleITK. ``check_intensities=False`` skips reading
image voxels (NaN/Inf and truncated images then go unnoticed); labels are always read in full.

No torch import here (nnunetv2 pulls it in), so validation starts instantly.
"""
from planning.checks.raw_dataset import validate_raw_dataset
from planning.checks.runner import ValidationReport

__all__ = ["ValidationReport", "validate_raw_dataset"]

"""Reading image files for the checks: supported endings, headers (SimpleITK) and voxels (nibabel for NIfTI).

Voxels of NIfTI files are read with nibabel, because ITK's NIfTI reader silently turns NaN/Inf
into 0 and zero-fills truncated files; other formats are read with SimpleITK.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: File endings nnU-Net v2 has a reader for (SimpleITKIO, NibabelIO, NaturalImage2DIO, Tiff3DIO).
SUPPORTED_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl", ".png", ".bmp", ".tif", ".tiff")

#: Endings whose headers carry physical geometry (spacing, origin, direction) that we compare.
GEOMETRY_FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")

#: 2-D natural image formats, where one file may hold several colour channels (RGB).
NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")

CHUNK_VOXELS = 1 << 24


@dataclass
class Header:
    path: Path
    dimension: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int


def _sitk_reason(error: Exception) -> str:
    """The useful last line of a (long, multi-line) SimpleITK/ITK exception."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    reason = lines[-1] if lines else type(error).__name__
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        if reason.startswith(prefix):
            reason = reason[len(prefix):].strip()
    reason = re.sub(r"^\w+IO\(0x[0-9a-f]+\):\s*", "", reason)
    return reason


def read_header(path: Path) -> Header | str:
    """Header of an image file, or a problem description."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    except RuntimeError as e:
        return f"cannot be read as an image (corrupt or not a {''.join(path.suffixes[-2:])} file): {_sitk_reason(e)}"
    size = tuple(int(s) for s in reader.GetSize())
    return Header(path=path, dimension=reader.GetDimension(), size=size, spacing=tuple(reader.GetSpacing()),
                   origin=tuple(reader.GetOrigin()), direction=tuple(reader.GetDirection()),
                   components=int(reader.GetNumberOfComponents()))


def read_voxels(path: Path) -> tuple[np.ndarray, np.dtype, object] | str:
    """Read all voxels: (array, on-disk dtype, object keeping the array alive), or a problem.

    NIfTI files are read with nibabel: ITK's NIfTI reader (so SimpleITK) silently turns NaN/Inf
    into 0 and zero-fills truncated files, which would hide exactly what we look for here.
    """
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel  # imported here: only NIfTI datasets need it

        try:
            nifti = nibabel.load(str(path))
            array = np.asanyarray(nifti.dataobj)  # scaled by scl_slope/scl_inter, as nnU-Net sees it
        except EOFError:
            return ("truncated: the compressed data ends early (interrupted copy or download?); "
                    "re-export or re-copy the file")
        except OSError as e:
            if "Expected" in str(e) and "bytes" in str(e):
                return (f"truncated: {str(e).splitlines()[0].replace(str(path), 'file')} "
                        "(interrupted copy or download?); re-export or re-copy the file")
            return f"cannot read the voxel data (corrupt file?): {e}"
        except nibabel.filebasedimages.ImageFileError:
            return "the NIfTI header is truncated or corrupt; re-export or re-copy the file"
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for damaged files
            return (f"cannot read the voxel data (corrupt or truncated file?): "
                    f"{str(e).replace(str(path), 'file')}")
        return array, nifti.get_data_dtype(), nifti
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        return f"cannot read the voxel data (corrupt or truncated file?): {_sitk_reason(e)}"
    array = sitk.GetArrayViewFromImage(image)
    return array, array.dtype, image

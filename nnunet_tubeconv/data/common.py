"""Helpers shared by the data-set writers: raw-root resolution, data-set folder naming and id checks, NIfTI output.

nnU-Net v2 raw format (nnunetv2 ``documentation/dataset_format.md``)::

    $nnUNet_raw/DatasetXXX_Name/
        dataset.json          channel_names, labels, numTraining, file_ending
        imagesTr/CASE_0000.nii.gz   one file per channel (_0000, _0001, ...)
        labelsTr/CASE.nii.gz        integer labels, same geometry as the images
        imagesTs/ (optional)

Arrays are handled in numpy axis order (z, y, x) / (y, x) throughout this package; spacings are given in the same
order and reversed only where SimpleITK (x, y, z) needs it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")
#: help of every writer's ``-o/--output`` (read by :func:`resolve_raw_root`)
OUTPUT_HELP = "nnU-Net raw root (default: $nnUNet_raw)"
#: help of every writer's ``--force`` (what :func:`prepare_dataset_folder` does with ``force``)
FORCE_HELP = "delete a different data set that uses the same id"


def add_output_arguments(parser: argparse.ArgumentParser, dataset_id: int, name: str) -> None:
    """``-o/--output``, ``--dataset-id`` and ``--name`` of a converter whose data set has a default id and name."""
    parser.add_argument("-o", "--output", default=None, help=OUTPUT_HELP)
    parser.add_argument("--dataset-id", type=int, default=dataset_id, help=f"default {dataset_id}")
    parser.add_argument("--name", default=name, help=f"data-set name (default {name})")


def training_cases(dataset_folder: Path) -> int:
    """How many training cases a written data set holds (its labels in labelsTr)."""
    return len(list((dataset_folder / "labelsTr").glob("*.nii.gz")))


def resolve_raw_root(raw_root: str | os.PathLike | None) -> Path:
    """Return ``raw_root`` if given, else ``$nnUNet_raw``; raise ``ValueError`` when neither is set."""
    if raw_root is not None and str(raw_root) != "":
        return Path(raw_root).expanduser()
    env = os.environ.get("nnUNet_raw")
    if env:
        return Path(env).expanduser()
    raise ValueError(
        "no output folder: pass -o/--output RAW_ROOT or set the environment variable nnUNet_raw "
        "(the nnU-Net raw data folder, see nnU-Net's documentation/setting_up_paths.md)"
    )


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name`` as nnU-Net expects it; ids are 1..999 (nnU-Net parses exactly three digits)."""
    if not isinstance(dataset_id, (int, np.integer)) or isinstance(dataset_id, bool) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be an integer in 1..999 (nnU-Net uses three digits), got {dataset_id!r}")
    if not _NAME_RE.match(name):
        raise ValueError(
            f"dataset name must be letters, digits and '-' (no '_', spaces or dots: nnU-Net splits the folder name "
            f"DatasetXXX_Name at the first '_'), got {name!r}"
        )
    return f"Dataset{int(dataset_id):03d}_{name}"


def existing_datasets_with_id(raw_root: Path, dataset_id: int) -> list[Path]:
    """Folders ``DatasetXXX_*`` in ``raw_root`` carrying ``dataset_id``."""
    if not raw_root.is_dir():
        return []
    prefix = f"Dataset{int(dataset_id):03d}_"
    return sorted(p for p in raw_root.iterdir() if p.is_dir() and p.name.startswith(prefix))


def _other_datasets_with_id(raw_root: Path, dataset_id: int, folder_name: str, force: bool) -> list[Path]:
    """Different data sets that carry ``dataset_id`` (refused unless ``force``: nnU-Net fails on two names for one
    id)."""
    others = [p for p in existing_datasets_with_id(raw_root, dataset_id) if p.name != folder_name]
    if others and not force:
        listing = ", ".join(str(p) for p in others)
        raise ValueError(
            f"dataset id {dataset_id} is already used by a different data set: {listing}. "
            f"Choose another id, or pass force=True / --force to delete it and write {folder_name}."
        )
    return others


def prepare_dataset_folder(raw_root: Path, dataset_id: int, name: str, force: bool = False) -> Path:
    """Create an empty ``raw_root/DatasetXXX_Name`` and return it.

    An existing folder of the same name is replaced (it is the same data set, regenerated). A *different* data set
    with the same id is refused unless ``force`` (then it is deleted), because nnU-Net resolves ids to names and
    fails on two names for one id.
    """
    folder_name = dataset_folder_name(dataset_id, name)
    raw_root = Path(raw_root)
    for p in _other_datasets_with_id(raw_root, dataset_id, folder_name, force):
        shutil.rmtree(p)
    out = raw_root / folder_name
    if out.exists():
        shutil.rmtree(out)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    return out


@contextmanager
def staged_dataset_folder(raw_root: Path, dataset_id: int, name: str, force: bool = False) -> Iterator[Path]:
    """Like :func:`prepare_dataset_folder`, but the data set is written into a hidden sibling folder that replaces
    ``raw_root/DatasetXXX_Name`` only when the ``with`` block ends without error: a conversion that fails half-way
    (an unreadable file, a shape mismatch) leaves no half-written data set behind, and an existing one untouched."""
    folder_name = dataset_folder_name(dataset_id, name)
    raw_root = Path(raw_root)
    others = _other_datasets_with_id(raw_root, dataset_id, folder_name, force)
    raw_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder_name}.partial-", dir=raw_root))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for p in others:
        shutil.rmtree(p)
    out = raw_root / folder_name
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def write_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
) -> None:
    """Write a 2D or 3D array with its voxel spacing (numpy axis order) to NIfTI through SimpleITK.

    ``origin``/``direction`` are in SimpleITK (x, y, z) order, as returned by ``GetOrigin``/``GetDirection``.
    """
    import SimpleITK as sitk

    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"only 2D or 3D arrays can be written, got shape {array.shape}")
    if len(spacing) != array.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match the array's {array.ndim} dimensions")
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing))))
    if origin is not None:
        img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(img, str(path), useCompression=True)


def write_dataset_json(
    folder: Path,
    channel_names: dict[int, str],
    labels: dict[str, int],
    num_training: int,
    **extra,
) -> None:
    """dataset.json through nnU-Net's own ``generate_dataset_json`` (file ending ``.nii.gz``)."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(
        str(folder),
        channel_names=dict(channel_names),
        labels=dict(labels),
        num_training_cases=int(num_training),
        file_ending=".nii.gz",
        **extra,
    )

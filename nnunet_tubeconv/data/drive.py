"""DRIVE retinal vessels (Staal et al., "Ridge-based vessel segmentation in color images of the retina", IEEE TMI 2004)
to an nnU-Net v2 raw 2D data set.

Two source layouts are recognised:

``original`` (the archive as distributed)::

    SRC/training/images/21_training.tif        RGB fundus image, 565 x 584
    SRC/training/1st_manual/21_manual1.gif     vessel annotation, 0/255
    SRC/training/mask/21_training_mask.gif     field-of-view mask (optional)
    SRC/test/images/01_test.tif                (optional) likewise, 1st_manual and mask optional

``nifti`` (as published with DSCNet, e.g. ``/work/shared/data/DRIVE``)::

    SRC/Image_Tr/21.nii.gz    2D grey image        SRC/Label_Tr/21.nii.gz    2D 0/1 mask (any dtype)
    SRC/Image_Ts/, SRC/Label_Ts/                   (optional) likewise

Output ``RAW_ROOT/DatasetXXX_DRIVE/``: cases ``DRIVE_21`` ...; ``imagesTr``/``labelsTr`` (label 1 = vessel, uint8),
test cases in ``imagesTs`` (and ``labelsTs`` when annotated), field-of-view masks in ``masksTr``/``masksTs`` (nnU-Net
ignores these folders; they are there so evaluations can be restricted to the field of view). Spacing 1 x 1.

Channels for RGB input: by default only the green channel is kept (``channels="green"``): it carries most of the
vessel contrast, is what most retinal-vessel work feeds a network, and matches the single grey channel of the NIfTI
layout, so models and numbers from both layouts are comparable. ``channels="rgb"`` writes three channels
(``_0000``/``_0001``/``_0002`` = R/G/B), each z-score normalised by nnU-Net.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_tubeconv.data.common import (
    FORCE_HELP,
    add_output_arguments,
    prepare_dataset_folder,
    resolve_raw_root,
    training_cases,
    write_dataset_json,
    write_nifti,
)

DEFAULT_DATASET_ID = 902
DEFAULT_NAME = "DRIVE"
CHANNEL_CHOICES = ("green", "rgb")

_ORIGINAL_EXPECTED = (
    "original layout: training/images/NN_training.tif, training/1st_manual/NN_manual1.gif "
    "(optional: training/mask/NN_training_mask.gif, test/images/NN_test.tif, test/1st_manual/NN_manual1.gif, "
    "test/mask/NN_test_mask.gif)"
)
_NIFTI_EXPECTED = "NIfTI layout: Image_Tr/NN.nii.gz and Label_Tr/NN.nii.gz with the same case names"


@dataclass
class DriveCase:
    case_id: str  # e.g. "21"
    image: Path
    label: Path | None
    mask: Path | None = None


@dataclass
class DriveSource:
    layout: str  # "original" | "nifti"
    train: list[DriveCase] = field(default_factory=list)
    test: list[DriveCase] = field(default_factory=list)


def _listing(src: Path, limit: int = 20) -> str:
    if not src.is_dir():
        return "(not a folder)" if src.exists() else "(does not exist)"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in src.iterdir())
    more = f" ... and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more if entries else "(empty folder)"


def _original_split(folder: Path, split: str, problems: list[str]) -> list[DriveCase]:
    suffix = f"_{split}.tif"
    images = sorted((folder / "images").glob(f"*{suffix}")) if (folder / "images").is_dir() else []
    if not images:
        problems.append(f"{folder / 'images'}: no *{suffix} files (found: {_listing(folder / 'images')})")
        return []
    cases = []
    for img in images:
        cid = img.name[: -len(suffix)]
        label = folder / "1st_manual" / f"{cid}_manual1.gif"
        mask = folder / "mask" / f"{cid}_{split}_mask.gif"
        cases.append(DriveCase(cid, img, label if label.is_file() else None, mask if mask.is_file() else None))
    return cases


def find_drive_source(src: str | os.PathLike) -> DriveSource:
    """Detect the layout of a DRIVE folder and list its cases; ``ValueError`` says what was expected and found."""
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"DRIVE source {src} is not a folder. Expected a folder with the {_ORIGINAL_EXPECTED}, "
                         f"or the {_NIFTI_EXPECTED}.")
    if (src / "training").is_dir():
        problems: list[str] = []
        train = _original_split(src / "training", "training", problems)
        unlabelled = [c.image.name for c in train if c.label is None]
        if unlabelled:
            problems.append(f"{src / 'training' / '1st_manual'}: no NN_manual1.gif for {', '.join(unlabelled)}")
        test = _original_split(src / "test", "test", []) if (src / "test" / "images").is_dir() else []
        if problems:
            raise ValueError(f"{src} looks like the original DRIVE layout but is incomplete:\n  - "
                             + "\n  - ".join(problems) + f"\nExpected the {_ORIGINAL_EXPECTED}.")
        return DriveSource("original", train, test)
    if (src / "Image_Tr").is_dir() or (src / "Label_Tr").is_dir():
        out = DriveSource("nifti")
        problems = []
        for split, target in (("Tr", out.train), ("Ts", out.test)):
            img_dir, lab_dir = src / f"Image_{split}", src / f"Label_{split}"
            if split == "Ts" and not img_dir.is_dir():
                continue
            imgs = {p.name[: -len(".nii.gz")]: p for p in img_dir.glob("*.nii.gz")} if img_dir.is_dir() else {}
            labs = {p.name[: -len(".nii.gz")]: p for p in lab_dir.glob("*.nii.gz")} if lab_dir.is_dir() else {}
            if split == "Tr" and not imgs:
                problems.append(f"{img_dir}: no *.nii.gz images (found: {_listing(img_dir)})")
            missing_labels = sorted(set(imgs) - set(labs))
            missing_images = sorted(set(labs) - set(imgs))
            if split == "Tr" and missing_labels:
                problems.append(f"{lab_dir}: no label for {', '.join(missing_labels)}")
            if missing_images:
                problems.append(f"{img_dir}: no image for labels {', '.join(missing_images)}")
            target.extend(DriveCase(cid, imgs[cid], labs.get(cid)) for cid in sorted(imgs))
        if problems:
            raise ValueError(f"{src} looks like the NIfTI DRIVE layout but is incomplete:\n  - "
                             + "\n  - ".join(problems) + f"\nExpected the {_NIFTI_EXPECTED}.")
        return out
    nested = [p.name for p in sorted(src.iterdir()) if (p / "training").is_dir() or (p / "Image_Tr").is_dir()]
    hint = f" Did you mean {src / nested[0]}?" if nested else ""
    raise ValueError(
        f"{src} is not a DRIVE folder. Expected either the {_ORIGINAL_EXPECTED}; or the {_NIFTI_EXPECTED}. "
        f"Found: {_listing(src)}.{hint}"
    )


def _read_binary_gif(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return (np.asarray(im.convert("L")) > 127).astype(np.uint8)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _write_original_case(case: DriveCase, cid: str, out: Path, split: str, channels: str) -> None:
    rgb = _read_rgb(case.image)  # (H, W, 3) uint8
    planes = [rgb[..., 1]] if channels == "green" else [rgb[..., c] for c in range(3)]
    for c, plane in enumerate(planes):
        write_nifti(out / f"images{split}" / f"{cid}_{c:04d}.nii.gz", np.ascontiguousarray(plane), (1.0, 1.0))
    for kind, path in (("labels", case.label), ("masks", case.mask)):
        if path is None:
            continue
        arr = _read_binary_gif(path)
        if arr.shape != rgb.shape[:2]:
            raise ValueError(f"{path} has shape {arr.shape}, but its image {case.image} has {rgb.shape[:2]}")
        (out / f"{kind}{split}").mkdir(exist_ok=True)
        write_nifti(out / f"{kind}{split}" / f"{cid}.nii.gz", arr, (1.0, 1.0))


def _write_nifti_case(case: DriveCase, cid: str, out: Path, split: str) -> None:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(case.image))
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{case.image}: expected one grey channel, found {img.GetNumberOfComponentsPerPixel()}")
    sitk.WriteImage(img, str(out / f"images{split}" / f"{cid}_0000.nii.gz"), useCompression=True)
    if case.label is None:
        return
    lab = sitk.ReadImage(str(case.label))
    if lab.GetSize() != img.GetSize():
        raise ValueError(f"{case.label} has size {lab.GetSize()}, but its image {case.image} has {img.GetSize()}")
    arr = (sitk.GetArrayFromImage(lab) > 0.5).astype(np.uint8)
    # labels take the image's geometry so nnU-Net's origin/direction checks pass even for sloppy headers
    (out / f"labels{split}").mkdir(exist_ok=True)
    write_nifti(out / f"labels{split}" / f"{cid}.nii.gz", arr, tuple(reversed(img.GetSpacing())),
                img.GetOrigin(), img.GetDirection())


def convert_drive(
    src: str | os.PathLike,
    raw_root: str | os.PathLike,
    dataset_id: int = DEFAULT_DATASET_ID,
    name: str = DEFAULT_NAME,
    channels: str = "green",
    force: bool = False,
) -> Path:
    """Convert a DRIVE folder (either layout, see the module docstring) to ``raw_root/DatasetXXX_<name>``."""
    if channels not in CHANNEL_CHOICES:
        raise ValueError(f"channels must be one of {CHANNEL_CHOICES}, got {channels!r}")
    source = find_drive_source(src)
    out = prepare_dataset_folder(Path(raw_root), dataset_id, name, force=force)
    if source.test:
        (out / "imagesTs").mkdir()
    for split, cases in (("Tr", source.train), ("Ts", source.test)):
        for case in cases:
            cid = f"{name}_{case.case_id}"
            if source.layout == "original":
                _write_original_case(case, cid, out, split, channels)
            else:
                _write_nifti_case(case, cid, out, split)
    if source.layout == "original" and channels == "rgb":
        channel_names = {0: "R", 1: "G", 2: "B"}
    elif source.layout == "original":
        channel_names = {0: "green"}
    else:
        channel_names = {0: "fundus"}
    write_dataset_json(
        out,
        channel_names=channel_names,
        labels={"background": 0, "vessel": 1},
        num_training=len(source.train),
        dataset_name=name,
        # not `citation=`: nnU-Net 2.8's generate_dataset_json writes `release` into that key
        reference="Staal et al., Ridge-based vessel segmentation in color images of the retina, IEEE TMI 23(4), 2004; "
        "https://drive.grand-challenge.org/",
        description=f"DRIVE retinal vessels converted by nnunet-tubeconv from the {source.layout} layout.",
        license="see https://drive.grand-challenge.org/ (research use)",
        converted_by="nnunet-tubeconv",
    )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="DRIVE folder: original layout (training/, test/) or NIfTI (Image_Tr/, Label_Tr/)")
    add_output_arguments(parser, DEFAULT_DATASET_ID, DEFAULT_NAME)
    parser.add_argument(
        "--channels", choices=CHANNEL_CHOICES, default="green",
        help="RGB input: keep the green channel (default) or write three channels",
    )
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def run(args: argparse.Namespace) -> int:
    find_drive_source(args.src)  # a wrong source is the likelier mistake: report it before the output folder
    out = convert_drive(args.src, resolve_raw_root(args.output), args.dataset_id, args.name, args.channels, args.force)
    print(f"wrote {training_cases(out)} training cases to {out}")
    return 0

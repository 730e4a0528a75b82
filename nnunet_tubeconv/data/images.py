"""``nnunet-tubeconv convert images``: a folder of image files and a folder of label files -> nnU-Net raw data set.

Most public tubular data sets come as two folders of PNG / TIFF / JPEG files (retina, coronary angiograms, cracks,
neurons). This converter pairs them by name, checks every pair, and writes nnU-Net v2's raw format:

* **pairing**: a label file belongs to the image whose name (without extension) equals the label's, or is the
  label's up to a ``.``, ``_`` or ``-`` (``im0001.png`` <- ``im0001.ah.png``, ``21_training.tif`` <-
  ``21_training_manual1.gif``); the longest such image name wins. ``--image-suffix`` strips a common ending from the
  image names first (``name_BM4D_denoised.tif`` -> case ``name``). An image without a label, a label without an
  image, or two labels for one image is an error naming the file.
* **channels**: ``all`` (default: one nnU-Net channel per colour channel, alpha dropped), ``grey`` (luminance), or
  one of ``red`` / ``green`` / ``blue`` (retina: the green channel carries the vessel contrast).
* **labels**: by default any value > 0 is the structure (label 1); ``--threshold T``: values > T; ``--map V=L``
  (repeatable): label value V becomes class L, every value of the files must be mapped (0 stays background unless
  mapped). A label with no foreground is refused (it is almost always a wrong file or a wrong threshold).
* **geometry**: 2D images get spacing 1 x 1 unless ``--spacing``; multi-page TIFF stacks are 3D (z, y, x) and need
  ``--spacing Z,Y,X``. Labels take their image's geometry.
* **second annotators**: ``--extra-labels NAME=DIR`` writes another label folder paired the same way as
  ``labels<split>_NAME`` (nnU-Net ignores it; ``nnunet-tubeconv evaluate`` can score it against ``labelsTr``).

The data set is written into a hidden folder and moved into place only when every case converted, so a failure
leaves nothing half-written behind.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_tubeconv.data.common import (
    FORCE_HELP,
    OUTPUT_HELP,
    dataset_folder_name,
    resolve_raw_root,
    staged_dataset_folder,
    write_dataset_json,
    write_nifti,
)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm")
CHANNEL_CHOICES = ("all", "grey", "red", "green", "blue")
_SEPARATORS = "._-"


@dataclass(frozen=True)
class CasePair:
    """One case: its id, its image file and one label file per label folder (the reference first)."""

    case_id: str
    image: Path
    labels: tuple[Path, ...] = field(default_factory=tuple)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files of ``folder`` (by extension, sorted); ``ValueError`` if it is not a folder or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} has no image files (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def _case_ids(images: Sequence[Path], image_suffix: str) -> dict[str, Path]:
    ids: dict[str, Path] = {}
    for img in images:
        stem = _stem(img)
        if image_suffix:
            if not stem.endswith(image_suffix):
                raise ValueError(f"{img}: its name does not end with --image-suffix {image_suffix!r}")
            stem = stem[: -len(image_suffix)]
        if stem in ids:
            raise ValueError(f"{img} and {ids[stem]} give the same case name {stem!r}")
        ids[stem] = img
    return ids


def match_labels(case_ids: Mapping[str, Path], labels: Sequence[Path]) -> dict[str, Path]:
    """``case id -> label file``: a label belongs to the longest case id that is its name or its name's start up to
    a ``.``, ``_`` or ``-``. ``ValueError`` naming the file for a label matching no case or a second label of a
    case; cases without a label are the caller's to report."""
    out: dict[str, Path] = {}
    for lab in labels:
        stem = _stem(lab)
        candidates = [c for c in case_ids if stem == c or (stem.startswith(c) and stem[len(c)] in _SEPARATORS)]
        if not candidates:
            raise ValueError(f"label {lab} matches no image (case names: {_preview(case_ids)})")
        case = max(candidates, key=len)
        if case in out:
            raise ValueError(f"two labels for image {case_ids[case]}: {out[case]} and {lab}")
        out[case] = lab
    return out


def _preview(names, limit: int = 6) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def pair_folders(images_dir: str | os.PathLike, label_dirs: Sequence[str | os.PathLike], image_suffix: str = ""
                 ) -> list[CasePair]:
    """Every image of ``images_dir`` with its label in each of ``label_dirs`` (see the module docstring)."""
    case_ids = _case_ids(list_image_files(images_dir), image_suffix)
    matched = [match_labels(case_ids, list_image_files(d)) for d in label_dirs]
    for d, m in zip(label_dirs, matched):
        missing = [case_ids[c] for c in case_ids if c not in m]
        if missing:
            raise ValueError(f"no label in {d} for image {missing[0]}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return [CasePair(c, case_ids[c], tuple(m[c] for m in matched)) for c in sorted(case_ids)]


def read_array(path: Path) -> np.ndarray:
    """Pixels of an image file: (H, W), (H, W, C), or (Z, Y, X) for a multi-page TIFF. ``ValueError`` naming the
    file when it cannot be read."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(str(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - any reader failure is an unreadable file for the user
        raise ValueError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"{path}: expected a 2D image, a colour image or a 3D stack, got shape {arr.shape}")
    return arr


def _is_colour(arr: np.ndarray) -> bool:
    return arr.ndim == 3 and arr.shape[-1] in (3, 4)


def select_channels(arr: np.ndarray, channels: str, path: Path) -> list[np.ndarray]:
    """The planes written as nnU-Net channels ``_0000``, ``_0001``, ... (see the module docstring)."""
    if channels not in CHANNEL_CHOICES:
        raise ValueError(f"channels must be one of {CHANNEL_CHOICES}, got {channels!r}")
    if not _is_colour(arr):
        return [arr]  # grey 2D image or 3D stack: one channel whatever was asked
    rgb = arr[..., :3]
    if channels == "all":
        return [np.ascontiguousarray(rgb[..., c]) for c in range(3)]
    if channels == "grey":
        w = np.array([0.299, 0.587, 0.114])
        return [(rgb.astype(np.float64) @ w).astype(np.float32)]
    return [np.ascontiguousarray(rgb[..., ("red", "green", "blue").index(channels)])]


def to_label(arr: np.ndarray, path: Path, threshold: float | None = None,
             value_map: Mapping[float, int] | None = None) -> np.ndarray:
    """Integer labels of a label file's pixels (colour files are reduced to their maximum over channels)."""
    if _is_colour(arr):
        arr = arr[..., :3].max(axis=-1)
    if value_map:
        unmapped = sorted(set(np.unique(arr).tolist()) - set(value_map) - {0})
        if unmapped:
            raise ValueError(f"{path}: label values {unmapped[:8]} are not in --map (mapped: {sorted(value_map)})")
        out = np.zeros(arr.shape, np.uint8)
        for v, lab in value_map.items():
            out[arr == v] = lab
    else:
        out = (arr > (0 if threshold is None else threshold)).astype(np.uint8)
    if not out.any():
        raise ValueError(f"{path}: the label has no foreground"
                         + ("" if value_map else f" (values > {0 if threshold is None else threshold})"))
    return out


def _case_spacing(arr_dims: int, spacing: Sequence[float] | None, path: Path) -> tuple[float, ...]:
    if spacing is None:
        if arr_dims == 3:
            raise ValueError(f"{path} is a 3D stack: give its voxel spacing (--spacing Z,Y,X)")
        return (1.0, 1.0)
    if len(spacing) != arr_dims:
        raise ValueError(f"{path} is {arr_dims}D, but the spacing {tuple(spacing)} has {len(spacing)} values")
    return tuple(float(s) for s in spacing)


def write_case(pair: CasePair, out: Path, name: str, channels: str, spacing: Sequence[float] | None,
               label_folders: Sequence[str], threshold: float | None = None,
               value_map: Mapping[float, int] | None = None) -> int:
    """Write one case's channels and labels into the data-set folder ``out``; returns its number of channels."""
    img = read_array(pair.image)
    planes = select_channels(img, channels, pair.image)
    shape = planes[0].shape
    sp = _case_spacing(len(shape), spacing, pair.image)
    cid = f"{name}_{pair.case_id}"
    for c, plane in enumerate(planes):
        write_nifti(out / "imagesTr" / f"{cid}_{c:04d}.nii.gz", plane, sp)
    for folder, lab_path in zip(label_folders, pair.labels):
        lab = to_label(read_array(lab_path), lab_path, threshold, value_map)
        if lab.shape != shape:
            raise ValueError(f"{lab_path} has shape {lab.shape}, but its image {pair.image} has {shape}")
        (out / folder).mkdir(exist_ok=True)
        write_nifti(out / folder / f"{cid}.nii.gz", lab, sp)
    return len(planes)


def convert_pairs(pairs: Sequence[CasePair], raw_root: str | os.PathLike, dataset_id: int, name: str,
                  channels: str = "all", spacing: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
                  extra_label_names: Sequence[str] = (), threshold: float | None = None,
                  value_map: Mapping[float, int] | None = None, label_names: Mapping[str, int] | None = None,
                  force: bool = False, **dataset_json_extra) -> Path:
    """Write ``pairs`` as ``raw_root/DatasetXXX_<name>`` (staged: nothing is left behind on error). ``spacing``: one
    for every case, or ``case id -> spacing``. The first label of each pair goes to ``labelsTr``, the others to
    ``labelsTr_<extra name>``."""
    if channels not in CHANNEL_CHOICES:
        raise ValueError(f"channels must be one of {CHANNEL_CHOICES}, got {channels!r}")
    if not pairs:
        raise ValueError("no cases to convert")
    folders = ["labelsTr", *(f"labelsTr_{n}" for n in extra_label_names)]
    if any(len(p.labels) != len(folders) for p in pairs):
        raise ValueError(f"every case needs {len(folders)} label files ({folders})")
    if label_names is None:
        classes = sorted(set(value_map.values()) - {0}) if value_map else [1]
        label_names = {"background": 0, **({"foreground": 1} if classes == [1] else {f"class{v}": v for v in classes})}
    n_channels = set()
    with staged_dataset_folder(Path(raw_root), dataset_id, name, force=force) as out:
        for p in pairs:
            sp = spacing.get(p.case_id) if isinstance(spacing, Mapping) else spacing
            n_channels.add(write_case(p, out, name, channels, sp, folders, threshold, value_map))
        if len(n_channels) != 1:
            raise ValueError(f"the images have different numbers of channels {sorted(n_channels)}; choose one "
                             f"channel with --channels (one of {CHANNEL_CHOICES})")
        n = n_channels.pop()
        names = {0: channels} if n == 1 and channels != "all" else (
            {0: "R", 1: "G", 2: "B"} if n == 3 else {c: f"channel{c}" for c in range(n)})
        write_dataset_json(out, channel_names=names, labels=dict(label_names), num_training=len(pairs),
                           dataset_name=name, converted_by="nnunet-tubeconv", **dataset_json_extra)
    return Path(raw_root) / dataset_folder_name(dataset_id, name)


def parse_value_map(items: Sequence[str] | None) -> dict[float, int] | None:
    """``["255=1", "128=2"]`` -> ``{255.0: 1, 128.0: 2}``; ``ValueError`` saying the allowed form."""
    if not items:
        return None
    out: dict[float, int] = {}
    for item in items:
        try:
            v, lab = item.split("=")
            out[float(v)] = int(lab)
        except ValueError:
            raise ValueError(f"--map takes VALUE=LABEL with a number and an integer label >= 0, got {item!r}") from None
        if out[float(v)] < 0:
            raise ValueError(f"--map takes VALUE=LABEL with an integer label >= 0, got {item!r}")
    return out


def parse_spacing(text: str | None) -> tuple[float, ...] | None:
    """``"5,0.994,0.994"`` -> ``(5.0, 0.994, 0.994)`` (numpy axis order); values must be > 0."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"spacing takes comma-separated numbers in axis order (Y,X or Z,Y,X), got {text!r}") from None
    if len(values) not in (2, 3) or any(not v > 0 for v in values):
        raise ValueError(f"spacing takes 2 or 3 positive numbers (Y,X or Z,Y,X), got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", help="folder of image files (PNG, TIFF, JPEG, ...; multi-page TIFF = 3D)")
    parser.add_argument("labels", help="folder of label files, paired with the images by name")
    parser.add_argument("--dataset-id", type=int, required=True, help="nnU-Net data set id (1..999)")
    parser.add_argument("--name", required=True, help="data-set name (letters, digits, '-')")
    parser.add_argument("-o", "--output", default=None, help=OUTPUT_HELP)
    parser.add_argument("--channels", choices=CHANNEL_CHOICES, default="all", help="colour images: all channels "
                        "(default), grey, or one of red/green/blue")
    parser.add_argument("--threshold", type=float, default=None, help="label = pixel value > T (default 0)")
    parser.add_argument("--map", action="append", default=None, metavar="VALUE=LABEL",
                        help="label value -> class (repeatable); every non-zero value must be mapped")
    parser.add_argument("--spacing", default=None, help="voxel spacing in axis order, Y,X or Z,Y,X (3D: required)")
    parser.add_argument("--image-suffix", default="", help="ending stripped from image names to get case names")
    parser.add_argument("--extra-labels", action="append", default=[], metavar="NAME=DIR",
                        help="another annotator's labels, written to labelsTr_NAME (repeatable)")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def run(args: argparse.Namespace) -> int:
    extra = []
    for item in args.extra_labels:
        if "=" not in item or not item.split("=", 1)[0].isidentifier():
            raise ValueError(f"--extra-labels takes NAME=DIR with NAME letters, digits and '_', got {item!r}")
        extra.append(tuple(item.split("=", 1)))
    pairs = pair_folders(args.images, [args.labels, *(d for _, d in extra)], args.image_suffix)
    out = convert_pairs(pairs, resolve_raw_root(args.output), args.dataset_id, args.name, args.channels,
                        parse_spacing(args.spacing), [n for n, _ in extra], args.threshold,
                        parse_value_map(args.map), force=args.force)
    print(f"wrote {len(pairs)} training cases to {out}")
    return 0

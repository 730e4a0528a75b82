"""vesselNN two-photon brain vessels (Teikari et al., arXiv:1606.02382, 2016) -> 3D nnU-Net raw data set.

Source layout (as in ``../shared/data/vesselNN``, the files of the public vesselNN_dataset repository)::

    SRC/images/<stack>_BM4D_denoised.tif       multi-page TIFF, (z, y, x), uint8
    SRC/labels/<stack>_<anything>.tif          same shape, vessel > 0
    SRC/metadata/<stack>_metadata.xml.txt      OME-XML of the microscope: PhysicalSizeX/Y/Z (micrometres)

Spacing comes from each stack's metadata, in micrometres (z, y, x); nnU-Net only uses ratios of spacings, and
evaluation tolerances of this data set are then in micrometres. A stack without metadata is refused unless its
spacing is given: ``--spacing STACK=Z,Y,X`` for one stack, or ``--spacing Z,Y,X`` for every stack without metadata
(the source repository says the two santos2015 stacks were acquired like ``santos2015_tumor``: 5 x 0.621 x 0.621).
What was read and what was assumed is printed for every stack. Cases ``vesselNN_<stack>``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnunet_tubeconv.data.common import FORCE_HELP, add_output_arguments, resolve_raw_root, training_cases
from nnunet_tubeconv.data.images import convert_pairs, pair_folders, parse_spacing

DEFAULT_DATASET_ID = 904
DEFAULT_NAME = "vesselNN"
IMAGE_SUFFIX = "_BM4D_denoised"
_SIZE = re.compile(r'PhysicalSize([XYZ])="([0-9.eE+-]+)"')


def metadata_spacing(path: Path) -> tuple[float, float, float]:
    """``(z, y, x)`` voxel size of an OME-XML metadata file (its first ``Pixels`` element); ``ValueError`` naming
    the file when a size is missing."""
    text = path.read_bytes().decode("latin-1")
    pixels = text.find("<Pixels ")
    found = dict(_SIZE.findall(text[pixels: text.find(">", pixels)] if pixels >= 0 else ""))
    missing = [a for a in "ZYX" if a not in found]
    if missing:
        raise ValueError(f"{path}: no PhysicalSize{'/'.join(missing)} in its Pixels element")
    return float(found["Z"]), float(found["Y"]), float(found["X"])


def parse_spacing_options(items: Sequence[str] | None) -> tuple[tuple[float, ...] | None, dict[str, tuple]]:
    """``--spacing`` values -> (spacing for every stack without metadata, {stack: spacing})."""
    default, per_stack = None, {}
    for item in items or []:
        stack, _, value = item.rpartition("=")
        sp = parse_spacing(value)
        if sp is None or len(sp) != 3:
            raise ValueError(f"--spacing takes Z,Y,X or STACK=Z,Y,X for these 3D stacks, got {item!r}")
        if stack:
            per_stack[stack] = sp
        else:
            default = sp
    return default, per_stack


def stack_spacings(src: Path, stacks: Sequence[str], default: Sequence[float] | None = None,
                   per_stack: Mapping[str, Sequence[float]] | None = None) -> dict[str, tuple[tuple, str]]:
    """``stack -> (spacing, where it came from)``; ``ValueError`` listing the stacks with no spacing."""
    per_stack = dict(per_stack or {})
    unknown = sorted(set(per_stack) - set(stacks))
    if unknown:
        raise ValueError(f"--spacing names stacks {unknown} that are not in {src / 'images'}; stacks: {list(stacks)}")
    out, missing = {}, []
    for s in stacks:
        meta = src / "metadata" / f"{s}_metadata.xml.txt"
        if s in per_stack:
            out[s] = (tuple(per_stack[s]), "given with --spacing")
        elif meta.is_file():
            out[s] = (metadata_spacing(meta), f"from {meta.name}")
        elif default is not None:
            out[s] = (tuple(default), "assumed (--spacing, no metadata)")
        else:
            missing.append(s)
    if missing:
        raise ValueError(f"no metadata/<stack>_metadata.xml.txt for stacks {missing}: give their spacing with "
                         "--spacing STACK=Z,Y,X (or --spacing Z,Y,X for every stack without metadata)")
    return out


def convert_vesselnn(src: str | os.PathLike, raw_root: str | os.PathLike, dataset_id: int = DEFAULT_DATASET_ID,
                     name: str = DEFAULT_NAME, spacing: Sequence[str] | None = None, force: bool = False,
                     log=print) -> Path:
    src = Path(src)
    if not (src / "images").is_dir() or not (src / "labels").is_dir():
        raise ValueError(f"{src} is not a vesselNN folder: expected images/<stack>{IMAGE_SUFFIX}.tif, "
                         "labels/<stack>_*.tif and metadata/<stack>_metadata.xml.txt")
    pairs = pair_folders(src / "images", [src / "labels"], image_suffix=IMAGE_SUFFIX)
    default, per_stack = parse_spacing_options(spacing)
    spacings = stack_spacings(src, [p.case_id for p in pairs], default, per_stack)
    for stack, (sp, where) in spacings.items():
        log(f"{stack}: spacing (z, y, x) = {sp} um, {where}")
    return convert_pairs(
        pairs, raw_root, dataset_id, name, channels="all", spacing={s: sp for s, (sp, _) in spacings.items()},
        label_names={"background": 0, "vessel": 1}, force=force,
        reference="Teikari, Santos, Poon and Hynynen, Deep learning convolutional networks for multiphoton "
        "microscopy vasculature segmentation, arXiv:1606.02382, 2016",
        description="vesselNN two-photon stacks (BM4D denoised); spacing in micrometres (z, y, x).",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="vesselNN folder with images/, labels/ and metadata/")
    add_output_arguments(parser, DEFAULT_DATASET_ID, DEFAULT_NAME)
    parser.add_argument("--spacing", action="append", default=None, metavar="[STACK=]Z,Y,X",
                        help="spacing in micrometres for a stack (or, without STACK=, every stack) without metadata")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def run(args: argparse.Namespace) -> int:
    out = convert_vesselnn(args.src, resolve_raw_root(args.output), args.dataset_id, args.name, args.spacing,
                           args.force)
    print(f"wrote {training_cases(out)} training cases to {out}")
    return 0

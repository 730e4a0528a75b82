"""STARE retinal vessels (Hoover et al., IEEE TMI 2000) with both human annotators -> 2D nnU-Net raw data set.

Source layout (as in ``../shared/data/STARE``; PPM/PGM of the original archive converted to PNG, or left as they
are)::

    SRC/images/im0001.png          RGB fundus image, 700 x 605
    SRC/labels-ah/im0001.ah.png    first observer (A. Hoover), vessel = 255: the reference, written to labelsTr
    SRC/labels-vk/im0001.vk.png    second observer (V. Kouznetsova): written to labelsTr_observer2

The second observer is kept beside the reference so that ``nnunet-tubeconv evaluate`` can score a second human
against the first: the ceiling a model is compared with (:data:`SECOND_OBSERVER`). Channels: the green channel
(default, as for DRIVE: it carries the vessel contrast) or all three. No field-of-view masks come with STARE and
none is derived: metrics are over the whole image. Spacing 1 x 1. Cases ``STARE_im0001`` ...
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nnunet_tubeconv.data.common import FORCE_HELP, add_output_arguments, resolve_raw_root, training_cases
from nnunet_tubeconv.data.images import convert_pairs, pair_folders

DEFAULT_DATASET_ID = 903
DEFAULT_NAME = "STARE"
CHANNEL_CHOICES = ("green", "all")
#: name of the second observer's label folder suffix: labelsTr_<SECOND_OBSERVER>
SECOND_OBSERVER = "observer2"
_FOLDERS = ("images", "labels-ah", "labels-vk")


def stare_folders(src: str | os.PathLike) -> tuple[Path, Path, Path]:
    """``(images, first observer, second observer)`` folders of a STARE source; ``ValueError`` saying what is
    expected."""
    src = Path(src)
    missing = [f for f in _FOLDERS if not (src / f).is_dir()]
    if missing:
        found = sorted(p.name for p in src.iterdir()) if src.is_dir() else "nothing (not a folder)"
        raise ValueError(f"{src} is not a STARE folder: expected the sub-folders {list(_FOLDERS)} (images/imNNNN.png, "
                         f"labels-ah/imNNNN.ah.png, labels-vk/imNNNN.vk.png); missing {missing}; found {found}")
    return src / "images", src / "labels-ah", src / "labels-vk"


def convert_stare(src: str | os.PathLike, raw_root: str | os.PathLike, dataset_id: int = DEFAULT_DATASET_ID,
                  name: str = DEFAULT_NAME, channels: str = "green", force: bool = False) -> Path:
    if channels not in CHANNEL_CHOICES:
        raise ValueError(f"channels must be one of {CHANNEL_CHOICES}, got {channels!r}")
    images, first, second = stare_folders(src)
    pairs = pair_folders(images, [first, second])
    return convert_pairs(
        pairs, raw_root, dataset_id, name, channels=channels, extra_label_names=[SECOND_OBSERVER],
        label_names={"background": 0, "vessel": 1}, force=force,
        reference="Hoover, Kouznetsova and Goldbaum, Locating blood vessels in retinal images by piecewise threshold "
        "probing of a matched filter response, IEEE TMI 19(3), 2000",
        description="STARE retinal vessels; labelsTr = first observer (AH), labelsTr_observer2 = second observer "
        "(VK); no field-of-view masks.",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="STARE folder with images/, labels-ah/ and labels-vk/")
    add_output_arguments(parser, DEFAULT_DATASET_ID, DEFAULT_NAME)
    parser.add_argument("--channels", choices=CHANNEL_CHOICES, default="green",
                        help="the green channel (default) or all three")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def run(args: argparse.Namespace) -> int:
    stare_folders(args.src)  # a wrong source is the likelier mistake: report it before the output folder
    out = convert_stare(args.src, resolve_raw_root(args.output), args.dataset_id, args.name, args.channels, args.force)
    print(f"wrote {training_cases(out)} training cases to {out} "
          f"(first observer in labelsTr, second in labelsTr_{SECOND_OBSERVER})")
    return 0

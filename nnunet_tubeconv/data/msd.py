"""Medical Segmentation Decathlon (Antonelli et al., "The Medical Segmentation Decathlon", Nat. Commun. 2022) tasks to
nnU-Net v2 raw format: check the downloaded ``TaskXX_Name`` folder first, then run nnU-Net's own converter
(``nnunetv2.dataset_conversion.convert_MSD_dataset.convert_msd_dataset``, the code behind
``nnUNetv2_convert_MSD_dataset``), which splits 4D multi-modal images into ``_0000``, ``_0001``, ... channels.

Tasks worth having (download the tar from http://medicaldecathlon.com/, unpack, then convert)::

    # the tubular task: portal/hepatic vessels and liver tumours in portal-venous CT,
    # 303 training volumes, labels {0: background, 1: vessel, 2: tumour}, ~8.8 GB
    nnunet-tubeconv convert msd /data/Task08_HepaticVessel        # -> $nnUNet_raw/Dataset008_HepaticVessel

    # small tasks for a first end-to-end run (minutes, not hours):
    nnunet-tubeconv convert msd /data/Task04_Hippocampus          # 260 tiny MRI crops, 1 channel, ~30 MB
    nnunet-tubeconv convert msd /data/Task02_Heart                # 20 MRI volumes (left atrium), ~440 MB

    # an id already taken? choose another one
    nnunet-tubeconv convert msd /data/Task08_HepaticVessel -overwrite_id 108

The check reports everything missing at once (dataset.json keys, imagesTr/labelsTr/imagesTs, cases listed in
dataset.json but absent on disk, images without labels and vice versa, image dimensionality vs. the number of
modalities) instead of nnU-Net's first failing ``assert``. Files starting with ``.`` or ``_`` (macOS ``._``
resource forks, present in the official tarballs) are ignored, as nnU-Net does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_tubeconv.data.common import OUTPUT_HELP, dataset_folder_name, resolve_raw_root, training_cases
from nnunet_tubeconv.environ import set_environ

_TASK_RE = re.compile(r"^Task(\d+)_([A-Za-z0-9\-]+)$")
REQUIRED_JSON_KEYS = ("modality", "labels", "numTraining", "training", "test")


@dataclass(frozen=True)
class MsdTask:
    folder: Path
    task_id: int
    name: str
    modalities: dict[str, str]
    labels: dict[str, str]
    num_training: int
    num_test: int


def _case_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        p.name[: -len(".nii.gz")]: p
        for p in folder.iterdir()
        if p.name.endswith(".nii.gz") and not p.name.startswith((".", "_"))
    }


def _entry_case(entry: str) -> str:
    return Path(entry).name.removesuffix(".nii.gz")


def _short(items: list[str], limit: int = 10) -> str:
    more = f" ... ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _missing(problems: list[str], what: str, cases: set[str]) -> None:
    """Append ``what: case, case ...`` (sorted, shortened) to ``problems`` when there are ``cases``."""
    if cases:
        problems.append(f"{what}: {_short(sorted(cases))}")


def check_msd_task_folder(folder: str | os.PathLike) -> MsdTask:
    """Check that ``folder`` is a complete MSD task; ``ValueError`` lists every problem found."""
    import SimpleITK as sitk

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"MSD task folder {folder} does not exist or is not a folder")
    m = _TASK_RE.match(folder.name)
    if m is None:
        raise ValueError(
            f"MSD task folder must be named TaskXX_Name with exactly one '_' (nnU-Net reads id and name from it, "
            f"e.g. Task08_HepaticVessel), got {folder.name!r}"
        )
    problems: list[str] = []
    for sub in ("imagesTr", "labelsTr"):
        if not (folder / sub).is_dir():
            problems.append(f"{sub}/ is missing")
    if not (folder / "imagesTs").is_dir():
        problems.append("imagesTs/ is missing (nnU-Net's converter requires it; create an empty one if you have no "
                        "test images)")
    meta: dict = {}
    json_path = folder / "dataset.json"
    if not json_path.is_file():
        problems.append("dataset.json is missing")
    else:
        try:
            meta = json.loads(json_path.read_text())
        except json.JSONDecodeError as e:
            problems.append(f"dataset.json is not valid JSON: {e}")
        missing_keys = [k for k in REQUIRED_JSON_KEYS if k not in meta]
        if meta and missing_keys:
            problems.append(f"dataset.json lacks the keys {missing_keys} "
                            f"(an MSD dataset.json has {list(REQUIRED_JSON_KEYS)})")

    images, labels, tests = (_case_files(folder / s) for s in ("imagesTr", "labelsTr", "imagesTs"))
    if (folder / "imagesTr").is_dir() and not images:
        problems.append("imagesTr/ holds no .nii.gz images")
    _missing(problems, "images without a label in labelsTr/", set(images) - set(labels))
    _missing(problems, "labels without an image in imagesTr/", set(labels) - set(images))

    training = meta.get("training", []) if isinstance(meta.get("training"), list) else []
    listed = [_entry_case(e.get("image", "")) for e in training if isinstance(e, dict)]
    listed_labels = [_entry_case(e.get("label", "")) for e in training if isinstance(e, dict)]
    if "training" in meta:
        _missing(problems, "dataset.json lists training images missing from imagesTr/", set(listed) - set(images))
        _missing(problems, "dataset.json lists labels missing from labelsTr/", set(listed_labels) - set(labels))
        _missing(problems, "imagesTr/ holds images not listed in dataset.json 'training'", set(images) - set(listed))
        if "numTraining" in meta and meta["numTraining"] != len(training):
            problems.append(f"dataset.json numTraining is {meta['numTraining']} but 'training' lists {len(training)}")
    if isinstance(meta.get("test"), list):
        _missing(problems, "dataset.json lists test images missing from imagesTs/",
                 {_entry_case(e) for e in meta["test"] if isinstance(e, str)} - set(tests))

    modalities = meta.get("modality", {}) if isinstance(meta.get("modality"), dict) else {}
    if modalities:
        expect = "3D" if len(modalities) == 1 else f"4D with {len(modalities)} volumes"
        wrong = []
        reader = sitk.ImageFileReader()
        for cid, path in sorted(images.items()) + sorted(tests.items()):
            reader.SetFileName(str(path))
            try:
                reader.ReadImageInformation()  # header only
            except RuntimeError:
                wrong.append(f"{path.name} (unreadable)")
                continue
            size = reader.GetSize()
            ok = len(size) == 3 if len(modalities) == 1 else (len(size) == 4 and size[3] == len(modalities))
            if not ok:
                wrong.append(f"{path.name} {len(size)}D {size}")
        if wrong:
            problems.append(f"images should be {expect} (dataset.json lists {len(modalities)} modalities): "
                            f"{_short(wrong)}")
    if problems:
        raise ValueError(f"MSD task folder {folder} is incomplete:\n  - " + "\n  - ".join(problems))
    return MsdTask(
        folder=folder,
        task_id=int(m.group(1)),
        name=m.group(2),
        modalities={str(k): v for k, v in modalities.items()},
        labels={str(k): v for k, v in meta["labels"].items()},
        num_training=len(training),
        num_test=len(tests),
    )


def convert_msd(
    folder: str | os.PathLike,
    raw_root: str | os.PathLike | None = None,
    overwrite_id: int | None = None,
    num_processes: int | None = None,
) -> Path:
    """Check ``folder`` and convert it with nnU-Net's ``convert_msd_dataset``; return the new data-set folder.

    ``raw_root`` defaults to ``$nnUNet_raw`` (nnU-Net writes there; it is set for the duration of the call).
    """
    task = check_msd_task_folder(folder)
    raw_root = resolve_raw_root(raw_root)
    target_id = task.task_id if overwrite_id is None else int(overwrite_id)
    target = raw_root / dataset_folder_name(target_id, task.name)
    num_processes = max(1, min(4, os.cpu_count() or 1)) if num_processes is None else int(num_processes)
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")

    from nnunetv2.dataset_conversion.convert_MSD_dataset import convert_msd_dataset
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    with set_environ(nnUNet_raw=str(raw_root)):
        taken = list(find_candidate_datasets(target_id))
        if taken:
            raise ValueError(
                f"dataset id {target_id} is already used by {taken} (nnU-Net looks in nnUNet_raw={raw_root}, "
                f"nnUNet_preprocessed and nnUNet_results); pick a free one with -overwrite_id N"
            )
        raw_root.mkdir(parents=True, exist_ok=True)
        convert_msd_dataset(str(task.folder), overwrite_target_id=target_id, num_processes=num_processes)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_folder", help="unpacked MSD task, e.g. /data/Task08_HepaticVessel")
    parser.add_argument(
        "-overwrite_id", "--overwrite-id", dest="overwrite_id", type=int, default=None,
        help="data-set id to write (default: the task number, e.g. 8 -> Dataset008_HepaticVessel)",
    )
    parser.add_argument("-o", "--output", default=None, help=OUTPUT_HELP)
    parser.add_argument("-np", "--num-processes", dest="num_processes", type=int, default=None,
                        help="worker processes for splitting 4D images (default: min(4, CPUs))")


def run(args: argparse.Namespace) -> int:
    out = convert_msd(args.task_folder, args.output, args.overwrite_id, args.num_processes)
    print(f"wrote {training_cases(out)} training cases to {out}")
    return 0

"""Find and load a trained nnU-Net model folder, exactly as nnU-Net's own inference does.

A *model folder* is what ``nnUNetv2_train`` writes under ``nnUNet_results``: the trainer-plans-configuration folder
``<nnUNet_results>/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>`` holding ``plans.json``, ``dataset.json``
and ``fold_<f>/checkpoint_final.pth``. :func:`resolve_model_folder` also accepts the data set folder plus trainer /
plans / configuration (what ``nnUNetv2_predict -d -tr -p -c`` takes) and a ``fold_<f>`` folder.

:func:`load_trained_model` goes through ``nnUNetPredictor.initialize_from_trained_model_folder`` (nnunetv2
``inference/predict_from_raw_data.py``): plans.json and dataset.json of the folder, the checkpoint's
``trainer_name`` and ``init_args['configuration']``, the trainer class found by
``recursive_find_trainer_class_by_name`` and its ``build_network_architecture(..., enable_deep_supervision=False)``,
then a strict ``load_state_dict``. Our trainers are found because this package's trainer folder is added to
``nnUNet_extTrainer`` (after the user's own folders, which keep priority) for the duration of the lookup.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_tubeconv.environ import set_environ

CHECKPOINT = "checkpoint_final.pth"
EXT_TRAINER = "nnUNet_extTrainer"

__all__ = [
    "CHECKPOINT",
    "ModelFolder",
    "ModelFolderError",
    "TrainedModel",
    "add_model_arguments",
    "available_folds",
    "check_fold",
    "ext_trainer_with_ours",
    "load_trained_model",
    "resolve_model_folder",
    "resolve_model_path",
    "with_our_trainers",
]


class ModelFolderError(ValueError):
    """The given path is not a usable trained nnU-Net model folder (the message says why and what is allowed)."""


@dataclass(frozen=True)
class ModelFolder:
    """A resolved trainer-plans-configuration folder and the fold to use."""

    path: Path
    fold: str  # "0".."4" or "all"
    checkpoint: str = CHECKPOINT

    @property
    def trainer(self) -> str:
        return self.path.name.split("__")[0]

    @property
    def plans_name(self) -> str:
        parts = self.path.name.split("__")
        return parts[1] if len(parts) == 3 else "?"

    @property
    def configuration(self) -> str:
        parts = self.path.name.split("__")
        return parts[2] if len(parts) == 3 else "?"

    @property
    def dataset_name(self) -> str:
        return self.path.parent.name

    @property
    def checkpoint_path(self) -> Path:
        return self.path / f"fold_{self.fold}" / self.checkpoint


def available_folds(folder: str | os.PathLike, checkpoint: str = CHECKPOINT) -> list[str]:
    """Folds (``"0"``, ..., ``"all"``) of a model folder that hold ``checkpoint``."""
    folds = []
    for d in sorted(Path(folder).glob("fold_*")):
        if d.is_dir() and (d / checkpoint).is_file():
            folds.append(d.name[len("fold_"):])
    return folds


def _is_model_folder(p: Path) -> bool:
    return (p / "plans.json").is_file() and (p / "dataset.json").is_file()


def resolve_model_path(
    path: str | os.PathLike,
    trainer: str | None = None,
    plans: str | None = None,
    configuration: str | None = None,
) -> tuple[Path, str | None]:
    """The trainer-plans-configuration folder that ``path`` names, and the fold if ``path`` is a fold folder.

    ``path`` may be that folder, one of its ``fold_<f>`` folders, or the data set folder (``DatasetXXX_Name`` under
    ``nnUNet_results``) together with ``trainer`` / ``plans`` / ``configuration``; those left out are inferred when
    only one subfolder matches. Raises ``ModelFolderError`` saying what is wrong and what is accepted.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFolderError(f"model folder {str(p)!r} does not exist")
    if not p.is_dir():
        raise ModelFolderError(f"model folder {str(p)!r} is not a directory")
    fold = None
    if p.name.startswith("fold_") and _is_model_folder(p.parent):
        fold, p = p.name[len("fold_"):], p.parent
    if not _is_model_folder(p):
        candidates = sorted(d for d in p.iterdir() if d.is_dir() and d.name.count("__") == 2 and _is_model_folder(d))
        if not candidates:
            raise ModelFolderError(
                f"{p} is not a trained nnU-Net model folder: it has no plans.json + dataset.json, and no "
                "<Trainer>__<Plans>__<configuration> subfolders. Give the folder nnUNetv2_train wrote, e.g. "
                "$nnUNet_results/Dataset900_X/nnUNetTrainerDSConv__nnUNetPlans__2d, or the data set folder with "
                "-tr/-p/-c"
            )
        wanted = [trainer, plans, configuration]
        matches = [d for d in candidates if all(w is None or w == part for w, part in zip(wanted, d.name.split("__")))]
        if len(matches) != 1:
            listing = ", ".join(d.name for d in candidates)
            what = "no" if not matches else "several"
            raise ModelFolderError(
                f"{what} trained models in {p} match trainer={trainer} plans={plans} configuration={configuration}; "
                f"available: {listing}. Choose one with -tr/-p/-c or pass its folder directly"
            )
        p = matches[0]
    else:
        parts = p.name.split("__")
        if len(parts) == 3:
            for label, given, actual in zip(("trainer", "plans", "configuration"), (trainer, plans, configuration),
                                            parts):
                if given is not None and given != actual:
                    raise ModelFolderError(f"{p.name} was trained with {label} {actual!r}, not {given!r}")
    return p.resolve(), fold


def check_fold(fold: str | int) -> str:
    """``fold`` as nnU-Net names it (``"0"`` ... or ``"all"``); ``ModelFolderError`` otherwise."""
    fold = str(fold)
    if fold != "all" and not fold.isdigit():
        raise ModelFolderError(f"fold must be an integer or 'all', got {fold!r}")
    return fold


def resolve_model_folder(
    path: str | os.PathLike,
    fold: str | int | None = None,
    trainer: str | None = None,
    plans: str | None = None,
    configuration: str | None = None,
    checkpoint: str = CHECKPOINT,
) -> ModelFolder:
    """Resolve ``path`` (see :func:`resolve_model_path`) and one fold; raise ``ModelFolderError`` if unusable.

    ``fold``: an int, ``"all"``, or None to use the fold of a ``fold_<f>`` path or else the only fold that has
    ``checkpoint`` (an error lists them when there are several).
    """
    p, path_fold = resolve_model_path(path, trainer, plans, configuration)
    if path_fold is not None:
        if fold is not None and check_fold(fold) != path_fold:
            raise ModelFolderError(f"{path} is fold {path_fold!r} but fold {fold!r} was asked for")
        fold = path_fold
    folds = available_folds(p, checkpoint)
    if fold is None:
        if len(folds) != 1:
            raise ModelFolderError(
                f"{p} has {'no' if not folds else 'several'} folds with {checkpoint}"
                f"{': ' + ', '.join(folds) if folds else ''}; choose one with -f"
                + ("" if folds else " (is training finished? use --checkpoint checkpoint_latest.pth otherwise)")
            )
        fold = folds[0]
    fold = check_fold(fold)
    if fold not in folds:
        raise ModelFolderError(
            f"{p} has no fold_{fold}/{checkpoint}; folds with that checkpoint: {folds or 'none'}"
        )
    return ModelFolder(p, fold, checkpoint)


def ext_trainer_with_ours(existing: str | None) -> str:
    """``nnUNet_extTrainer`` value: the user's folders first (their subclasses win), then this package's trainers."""
    from nnunet_tubeconv.trainers import trainer_folder

    ours = str(trainer_folder())
    parts = [q for q in (existing or "").split(os.pathsep) if q.strip()]
    resolved = {Path(q).resolve() for q in parts if Path(q).exists()}
    if Path(ours).resolve() not in resolved:
        parts.append(ours)
    return os.pathsep.join(parts)


@contextlib.contextmanager
def with_our_trainers() -> Iterator[None]:
    """Temporarily extend ``nnUNet_extTrainer`` with our trainer folder and switch ``nnUNet_compile`` off."""
    # nnUNet_compile off: a compiled module can neither be traced nor hooked
    with set_environ(**{EXT_TRAINER: ext_trainer_with_ours(os.environ.get(EXT_TRAINER)), "nnUNet_compile": "0"}):
        yield


@dataclass
class TrainedModel:
    """A model folder loaded for inference (network in eval mode, deep supervision off, on CPU)."""

    folder: ModelFolder
    predictor: Any  # nnunetv2 nnUNetPredictor, initialised from the folder
    configuration_name: str
    plans: dict = field(repr=False)
    dataset_json: dict = field(repr=False)

    @property
    def network(self):
        return self.predictor.network

    @property
    def trainer_name(self) -> str:
        return self.predictor.trainer_name

    @property
    def plans_manager(self):
        return self.predictor.plans_manager

    @property
    def configuration_manager(self):
        return self.predictor.configuration_manager

    @property
    def num_input_channels(self) -> int:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        return determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)

    @property
    def dim(self) -> int:
        return len(self.configuration_manager.patch_size)


def load_trained_model(folder: ModelFolder, configuration: str | None = None, device: str = "cpu") -> TrainedModel:
    """Load ``folder`` through ``nnUNetPredictor.initialize_from_trained_model_folder``.

    ``configuration``: if given, must equal the configuration the checkpoint was trained with. Raises
    ``ModelFolderError`` when the trainer class cannot be found (naming ``nnUNet_extTrainer``) or the weights do not
    fit the network the plans describe.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    try:
        ckpt = torch.load(folder.checkpoint_path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # an unreadable checkpoint is an input problem, whatever torch raises
        raise ModelFolderError(f"cannot read checkpoint {folder.checkpoint_path}: {e}") from e
    try:
        trained_with = ckpt["init_args"]["configuration"]
    except (KeyError, TypeError):
        raise ModelFolderError(
            f"{folder.checkpoint_path} is not an nnU-Net v2 checkpoint (no init_args['configuration'])"
        ) from None
    del ckpt
    if configuration is not None and configuration != trained_with:
        raise ModelFolderError(
            f"{folder.checkpoint_path} was trained with configuration {trained_with!r}, not {configuration!r}"
        )
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # the predictor prints a note about devices other than CUDA
        predictor = nnUNetPredictor(
            tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=False,
            device=torch.device(device), verbose=False, verbose_preprocessing=False, allow_tqdm=False,
        )
    with with_our_trainers():
        try:
            with contextlib.redirect_stdout(log):
                predictor.initialize_from_trained_model_folder(str(folder.path), (folder.fold,), folder.checkpoint)
        except RuntimeError as e:
            if "Could not find requested nnunet trainer" in str(e):
                raise ModelFolderError(
                    f"the checkpoint {folder.checkpoint_path} was written by a trainer class nnU-Net cannot find. "
                    f"nnunet-tubeconv's trainers are added automatically; for your own trainer subclass set "
                    f"{EXT_TRAINER} to the folder that holds its .py file (several folders separated by "
                    f"{os.pathsep!r}). nnU-Net said: {e}"
                ) from e
            if "state_dict" in str(e):
                raise ModelFolderError(
                    f"the weights in {folder.checkpoint_path} do not fit the network that {folder.path}/plans.json "
                    f"describes: {str(e)[:2000]}"
                ) from e
            raise
    predictor.network.eval()
    plans = json.loads((folder.path / "plans.json").read_text())
    dataset_json = json.loads((folder.path / "dataset.json").read_text())
    return TrainedModel(folder=folder, predictor=predictor, configuration_name=trained_with, plans=plans,
                        dataset_json=dataset_json)


def add_model_arguments(parser, fold_help: str = "fold to use (default: the only trained one)",
                        several_folds: bool = False) -> None:
    """The model-folder arguments shared by export-onnx, package and show-snakes (``-f`` takes a list if
    ``several_folds``)."""
    parser.add_argument(
        "model_folder",
        metavar="MODEL_FOLDER",
        help="trained model folder ($nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>), "
        "one of its fold_<f> folders, or the data set folder together with -tr/-p/-c",
    )
    parser.add_argument("-c", "--configuration", default=None, help="configuration (2d, 3d_fullres, ...)")
    parser.add_argument("-f", "--fold", default=None, nargs="+" if several_folds else None, help=fold_help)
    parser.add_argument("-tr", "--trainer", default=None, help="trainer class name (with a data set folder)")
    parser.add_argument("-p", "--plans", default=None, help="plans identifier (with a data set folder)")
    parser.add_argument("-chk", "--checkpoint", default=CHECKPOINT, help=f"checkpoint file name (default {CHECKPOINT})")

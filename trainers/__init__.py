"""Thin nnUNetTrainer subclasses; this folder is what ``nnUNet_extTrainer`` names.

Make stock nnU-Net find them (``nnunet-tubeconv env`` prints this line for the installed location)::

    export nnUNet_extTrainer=<directory of nnunet_tubeconv.trainers>
    nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerDSConv

The trainer classes are loaded on first access, so ``import nnunet_tubeconv.trainers`` (e.g. to find
:func:`trainer_folder`) does not import torch or nnU-Net. nnU-Net's lookup never imports this ``__init__``: it imports
each module of the folder as a top-level module.
"""

from __future__ import annotations

import importlib
from pathlib import Path

_LAZY: dict[str, str] = {
    "nnUNetTrainerTubeBase": "tubeconv_base",
    "architecture_entry": "tubeconv_base",
    "nnUNetTrainerDSConv": "tubeconv_variants",
    "nnUNetTrainerDLKDFF": "tubeconv_variants",
    "nnUNetTrainerDLKDFFAuthors2025": "tubeconv_variants",
    "nnUNetTrainerScSE": "tubeconv_variants",
    "nnUNetTrainerDeformConv": "tubeconv_variants",
    "nnUNetTrainerTubeConv": "tubeconv_variants",
    "TRAINERS": "tubeconv_variants",
}

__all__ = [
    "TRAINERS",
    "architecture_entry",
    "nnUNetTrainerDLKDFF",
    "nnUNetTrainerDLKDFFAuthors2025",
    "nnUNetTrainerDSConv",
    "nnUNetTrainerDeformConv",
    "nnUNetTrainerScSE",
    "nnUNetTrainerTubeBase",
    "nnUNetTrainerTubeConv",
    "trainer_folder",
]


def trainer_folder() -> Path:
    """The directory to put in ``nnUNet_extTrainer`` (this package's folder, wherever it is installed)."""
    return Path(__file__).resolve().parent


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

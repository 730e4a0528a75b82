"""Thin nnUNetTrainer subclasses; this folder is what ``nnUNet_extTrainer`` names.

Make stock nnU-Net find them (``nnunet-tubeconv env`` prints this line for the installed location)::

    export nnUNet_extTrainer=<directory of nnunet_tubeconv.trainers>
    nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerDSConv

:data:`TRAINER_MODULES` is the registry of every trainer this package ships: adding a trainer is defining its class
in a module of this folder and adding one line ``"ClassName": "module"`` there (``tests/unit/test_trainers.py`` fails
for a trainer class defined here but not registered, and for a registered name its module does not define).

The trainer classes are loaded on first access, so ``import nnunet_tubeconv.trainers`` (e.g. to find
:func:`trainer_folder` or the names in :data:`TRAINER_MODULES`) does not import torch or nnU-Net. nnU-Net's lookup
never imports this ``__init__``: it imports each module of the folder as a top-level module.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

#: Every trainer this package ships: class name (what ``nnUNetv2_train -tr`` takes) -> the module of this folder
#: that defines it. The one list of our trainers: everything else (TRAINERS, messages, docs checks) reads it.
TRAINER_MODULES: dict[str, str] = {
    "nnUNetTrainerDSConv": "tubeconv_variants",
    "nnUNetTrainerDLKDFF": "tubeconv_variants",
    "nnUNetTrainerDLKDFFAuthors2025": "tubeconv_variants",
    "nnUNetTrainerScSE": "tubeconv_variants",
    "nnUNetTrainerDeformConv": "tubeconv_variants",
    "nnUNetTrainerTubeConv": "tubeconv_variants",
    "nnUNetTrainerSkeletonRecall": "topology_losses",
    "nnUNetTrainerClDice": "topology_losses",
    "nnUNetTrainerDSConvSkeletonRecall": "topology_losses",
    "nnUNetTrainerTubeConvSkeletonRecall": "topology_losses",
    "nnUNetTrainerWide": "wide",
}

#: names importable from this package besides the trainers themselves
_HELPERS: dict[str, str] = {
    "nnUNetTrainerTubeBase": "tubeconv_base",
    "architecture_entry": "tubeconv_base",
    "SkeletonRecallMixin": "topology_losses",
    "ClDiceMixin": "topology_losses",
}

__all__ = ["TRAINERS", "TRAINER_MODULES", "trainer_block_options", "trainer_folder"]
__all__ += list(_HELPERS)
__all__ += list(TRAINER_MODULES)

_trainers: dict[str, Any] | None = None


def trainer_folder() -> Path:
    """The directory to put in ``nnUNet_extTrainer`` (this package's folder, wherever it is installed)."""
    return Path(__file__).resolve().parent


def trainer_block_options(name: str) -> dict[str, Any] | None:
    """The block options a trainer of this package builds its network with: its variant's options
    (``architectures.VARIANTS``) with the class's ``block_options`` laid over them (unresolved); None for a trainer
    without a variant (nnU-Net's own network, e.g. ``nnUNetTrainerSkeletonRecall``, ``nnUNetTrainerWide``) or not
    of this package. Imports the trainer class (torch, nnU-Net)."""
    if name not in TRAINER_MODULES:
        return None
    cls = _load(name)
    variant = getattr(cls, "variant", None)
    if variant is None:
        return None
    from nnunet_tubeconv.architectures import VARIANTS

    return {**VARIANTS[variant]["options"], **dict(getattr(cls, "block_options", None) or {})}


def _load(name: str) -> Any:
    module = TRAINER_MODULES.get(name) or _HELPERS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __getattr__(name: str):
    global _trainers
    if name == "TRAINERS":
        # Every registered trainer class, by name (imports torch and nnU-Net on first access)
        if _trainers is None:
            _trainers = {n: _load(n) for n in TRAINER_MODULES}
        return _trainers
    if name in TRAINER_MODULES or name in _HELPERS:
        return _load(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

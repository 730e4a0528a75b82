"""Generated arm trainers: every arm, vanilla included, trained on the same budget with a recorded seed.

nnU-Net has neither a budget nor a seed option. For each arm trainer ``T``, budget ``b`` and seed ``s`` the harness
writes ``class T_b_s<s>(T)`` into ``RESULTS_DIR/trainers/tubeconv_arm_trainers.py`` and puts that folder first in
``nnUNet_extTrainer`` for the ``nnUNetv2_train`` subprocesses (followed by the folder of
``nnunet_tubeconv.trainers`` and the user's own entries). The subclass

* sets ``num_epochs``, ``num_iterations_per_epoch``, ``num_val_iterations_per_epoch`` (and ``save_every``) after
  ``T.__init__``, so every arm gets the same schedule whatever ``T`` sets;
* seeds ``random``, ``numpy`` and ``torch`` at the start of ``__init__`` (before the network is built). This fixes
  initial weights and, with ``nnUNet_n_proc_DA=0``, the sampling on CPU, but nnU-Net training is still not
  bit-deterministic (multi-process augmentation with unseeded workers, cuDNN benchmark mode, atomics on GPU), so
  two runs with one seed differ somewhat: the records say so;
* writes ``harness_telemetry.json`` into the fold folder when training ends: parameter count, device, peak GPU
  memory (``torch.cuda.max_memory_allocated``), median time of ``train_step``, the network class and its
  ``block_options``. It changes nothing in training. The seeding and the telemetry mix-in are ordinary code in
  :mod:`nnunet_tubeconv.benchmarks.telemetry`; the generated module only imports them.

Class names use one underscore (``nnUNetTrainerDSConv_smoke_s0``), not two: nnU-Net parses model folders
``Trainer__Plans__Configuration`` by splitting on ``__`` (``convert_identifier_to_trainer_plans_config``), which a
``__`` inside the trainer name would break.

The base class must be importable by the generated module: a trainer of nnunetv2 is imported from its module; one of
``nnunet_tubeconv.trainers`` from that package; a user's (found through their ``nnUNet_extTrainer`` folders by
nnU-Net's own ``recursive_find_python_class``) by its module name relative to the folder it was found in, with that
folder put on ``sys.path`` for the import. ``cls.__module__`` and the file are recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_tubeconv.evaluation.serialise import atomic_write_text
from nnunet_tubeconv.trainers import TRAINER_MODULES, trainer_folder

GENERATED_MODULE = "tubeconv_arm_trainers"
SEED_NOTE = (
    "the seed seeds random/numpy/torch in the arm trainer's __init__; nnU-Net training is not bit-deterministic "
    "(augmentation workers, cuDNN autotuning, GPU atomics), so repeating a seed reproduces a run only approximately"
)


class TrainerNotFoundError(ValueError):
    """No trainer class of that name in nnunetv2, nnunet_tubeconv.trainers or the user's nnUNet_extTrainer."""


@dataclass(frozen=True)
class TrainerSource:
    """Where a base trainer class lives and how the generated module imports it."""

    name: str
    origin: str  # "nnunetv2" | "nnunet_tubeconv" | "user"
    module: str  # importable module name (relative to ``folder`` for origin "user")
    file: str
    folder: str | None = None  # sys.path entry for origin "user"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "module": self.module, "file": self.file,
                "folder": self.folder}


def generated_class_name(trainer: str, budget: str, seed: int) -> str:
    return f"{trainer}_{budget}_s{int(seed)}"


def user_ext_trainer_paths(env_value: str | None, exclude: list[Path]) -> list[str]:
    """The user's ``nnUNet_extTrainer`` entries, without ours and the harness's generated folders."""
    if not env_value:
        return []
    skip = {p.resolve() for p in exclude}
    out = []
    for p in env_value.split(os.pathsep):
        p = p.strip()
        if not p:
            continue
        rp = Path(p).expanduser().resolve()
        if rp in skip or rp.name == "trainers" and (rp / f"{GENERATED_MODULE}.py").exists():
            continue
        out.append(str(rp))
    return out


def find_trainer(name: str, user_paths: list[str]) -> TrainerSource:
    """Locate trainer class ``name`` in nnunetv2, then nnunet_tubeconv.trainers, then ``user_paths`` (nnU-Net's
    lookup order, ours inserted before the user's). Raises :class:`TrainerNotFoundError`."""
    import inspect
    import warnings

    import nnunetv2
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    def _check(cls):
        if not (isinstance(cls, type) and issubclass(cls, nnUNetTrainer)):
            raise TrainerNotFoundError(f"{name} was found in {cls.__module__} but is not a subclass of nnUNetTrainer")
        return cls

    with warnings.catch_warnings():
        # importing every module of nnU-Net's trainer tree triggers deprecation noise unrelated to the user's suite
        warnings.simplefilter("ignore", FutureWarning)
        cls = recursive_find_python_class(
            os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name, "nnunetv2.training.nnUNetTrainer"
        )
    if cls is not None:
        _check(cls)
        return TrainerSource(name, "nnunetv2", cls.__module__, inspect.getfile(cls))
    ours = trainer_folder()
    cls = recursive_find_python_class(str(ours), name, "nnunet_tubeconv.trainers")
    if cls is not None:
        _check(cls)
        return TrainerSource(name, "nnunet_tubeconv", cls.__module__, inspect.getfile(cls))
    for folder in user_paths:
        if not os.path.isdir(folder):
            continue
        cls = recursive_find_python_class(folder, name, None, base_folder=folder, cleanup_imports_from_base_folder=True)
        if cls is not None:
            _check(cls)
            # nnU-Net drops the user's modules from sys.modules after the lookup, so the file comes from the name
            rel = Path(folder, *cls.__module__.split("."))
            file = rel.with_suffix(".py") if rel.with_suffix(".py").is_file() else rel / "__init__.py"
            return TrainerSource(name, "user", cls.__module__, str(file), folder)
    searched = ["nnunetv2.training.nnUNetTrainer", f"nnunet_tubeconv.trainers ({ours})", *user_paths]
    raise TrainerNotFoundError(
        f"trainer class {name!r} not found; searched {searched}. Use a trainer name from nnU-Net (e.g. nnUNetTrainer), "
        f"from nnunet_tubeconv.trainers ({', '.join(TRAINER_MODULES)}), or put the folder of your own trainer "
        "module into the environment variable nnUNet_extTrainer"
    )


_HEADER = '''"""Arm trainers generated by nnunet-tubeconv's benchmark harness: do not edit (rewritten on every run).

Budget {budget!r}: num_epochs={num_epochs}, num_iterations_per_epoch={it}, num_val_iterations_per_epoch={val}.
Each class seeds random/numpy/torch in __init__; nnU-Net training is nevertheless not bit-deterministic.
"""

import torch

from nnunet_tubeconv.benchmarks.telemetry import HarnessTelemetry, import_from_folder, seed_everything
'''

_CLASS = '''

{import_line}


class {cls}(HarnessTelemetry, {base}):
    """{base} on budget {budget!r}, seed {seed}."""

    harness_seed = {seed}
    harness_budget = {budget!r}

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        seed_everything({seed})
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = {num_epochs}
        self.num_iterations_per_epoch = {it}
        self.num_val_iterations_per_epoch = {val}
        self.save_every = {save_every}
'''


def _import_line(src: TrainerSource, alias: str) -> str:
    if src.origin == "user":
        return f"{alias} = import_from_folder({src.module!r}, {src.folder!r}).{src.name}  # {src.file}"
    return f"from {src.module} import {src.name} as {alias}  # {src.file}"


def render_module(sources: dict[str, TrainerSource], seeds: dict[str, list[int]], budget) -> str:
    """Source of the generated module: one class per (trainer, seed)."""
    parts = [
        _HEADER.format(
            budget=budget.name,
            num_epochs=budget.num_epochs,
            it=budget.num_iterations_per_epoch,
            val=budget.num_val_iterations_per_epoch,
        )
    ]
    for trainer in sorted(sources):
        src = sources[trainer]
        alias = f"_Base_{trainer}"
        for i, seed in enumerate(sorted(set(seeds[trainer]))):
            parts.append(
                _CLASS.format(
                    import_line=_import_line(src, alias) if i == 0 else "",
                    cls=generated_class_name(trainer, budget.name, seed),
                    base=alias,
                    budget=budget.name,
                    seed=int(seed),
                    num_epochs=budget.num_epochs,
                    it=budget.num_iterations_per_epoch,
                    val=budget.num_val_iterations_per_epoch,
                    save_every=budget.save_every,
                )
            )
    return "".join(parts)


def write_arm_trainers(folder: Path, sources: dict[str, TrainerSource], seeds: dict[str, list[int]], budget) -> Path:
    """Write (only if changed) ``folder/tubeconv_arm_trainers.py`` and a JSON index of where each base came from."""
    folder.mkdir(parents=True, exist_ok=True)
    text = render_module(sources, seeds, budget)
    path = folder / f"{GENERATED_MODULE}.py"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    index = {
        "module": str(path),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "budget": budget.to_json(),
        "classes": {
            generated_class_name(t, budget.name, s): {"base": sources[t].to_json(), "seed": int(s)}
            for t in sorted(sources)
            for s in sorted(set(seeds[t]))
        },
    }
    index_text = json.dumps(index, indent=1, sort_keys=True)
    ipath = folder / "index.json"
    if not ipath.is_file() or ipath.read_text() != index_text:
        atomic_write_text(ipath, index_text)
    return path


def ext_trainer_value(generated_folder: Path, user_paths: list[str]) -> str:
    """``nnUNet_extTrainer`` for the subprocesses: generated arms first, then ours, then the user's."""
    return os.pathsep.join([str(generated_folder.resolve()), str(trainer_folder()), *user_paths])

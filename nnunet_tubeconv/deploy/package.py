"""``nnunet-tubeconv package``: a self-contained inference bundle for a challenge submission.

::

    nnunet-tubeconv package $nnUNet_results/Dataset900_X/nnUNetTrainerDSConv__nnUNetPlans__3d_fullres -o bundle/
    cd bundle && docker build -t my-algorithm . && docker run --rm --gpus all --network none \\
        -v $PWD/in:/input:ro -v $PWD/out:/output my-algorithm

The bundle (``DIR``):

``model.zip``
    nnU-Net's own export (``nnunetv2.model_sharing.model_export.export_pretrained_model``) of the chosen folds:
    checkpoints, plans.json, dataset.json, fingerprint, validation summaries.
    ``nnUNetv2_install_pretrained_model_from_zip`` reads it too.
``predict.py``
    the entry point (:mod:`nnunet_tubeconv.deploy.bundle_predict`): ``python predict.py INPUT_DIR OUTPUT_DIR``,
    defaults ``/input`` and ``/output`` (Grand Challenge's convention); nnU-Net's ``nnUNetPredictor`` with the
    model unpacked into a private results folder and ``nnUNet_extTrainer`` set to our trainers.
``requirements.txt``
    exact versions (``==``) of every package the installed nnunet-tubeconv needs, found by walking the installed
    distributions' requirements (nnunetv2, torch, dynamic-network-architectures, SimpleITK, ...), this package
    included.
``wheels/``
    a wheel of this nnunet-tubeconv (built from its source tree when available), so ``pip install --find-links
    wheels -r requirements.txt`` works offline of any private index.
``trainers/``
    only when the model was trained with a user's own trainer subclass (not nnU-Net's, not ours): the ``.py`` file
    that defines it, which ``predict.py`` puts on ``nnUNet_extTrainer``.
``postprocessing.pkl``, ``postprocessing.json``
    only when the model folder has them (``MODEL_FOLDER/postprocessing_tubes/``, written by ``nnunet-tubeconv
    postprocess determine`` on the model's cross-validation): ``predict.py`` applies the pkl's steps to every
    segmentation (``--no-postprocessing`` turns it off); ``bundle.json`` lists them.
``Dockerfile``, ``README.md``, ``bundle.json``
    the container recipe (``ENTRYPOINT python predict.py``, default arguments ``/input /output``), how to run it,
    and what the bundle holds (data set, trainer, plans, configuration, folds, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from nnunet_tubeconv.environ import set_environ

__all__ = ["build_wheel", "copy_postprocessing", "make_bundle", "pinned_requirements", "trainer_source"]

_SKIP = {"pip", "setuptools", "wheel"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(root: str = "nnunet-tubeconv") -> list[str]:
    """``name==version`` for ``root`` and every distribution it needs, transitively, as installed here.

    Requirements are evaluated with this interpreter's environment markers (extras not requested are skipped);
    local version labels (``2.14.1+cu130``) are dropped so that the pins resolve on PyPI.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (_canonical(name), extras)
        if key in seen or _canonical(name) in _SKIP:
            continue
        seen.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise ValueError(f"{name} is required but not installed; cannot pin it") from None
        pins[_canonical(dist.metadata["Name"])] = dist.version.split("+")[0]
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def _source_tree() -> Path | None:
    """The repository root of this nnunet-tubeconv, if it is installed from a source tree (editable)."""
    import nnunet_tubeconv

    root = Path(nnunet_tubeconv.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "trainers").is_dir() else None


def build_wheel(wheel_dir: Path) -> Path:
    """Build a wheel of this package into ``wheel_dir`` from a temporary copy of its source tree (the tree itself
    is not written to). Raises ``RuntimeError`` when there is no source tree or the build fails."""
    src = _source_tree()
    if src is None:
        raise RuntimeError("nnunet-tubeconv is not installed from a source tree; cannot build its wheel")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nnunet_tubeconv_src_") as tmp:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
        for item in ("pyproject.toml", "README.md", "LICENSE", "nnunet_tubeconv", "architectures", "trainers",
                     "benchmarks"):
            p = src / item
            if p.is_dir():
                shutil.copytree(p, Path(tmp) / item, ignore=ignore)
            elif p.is_file():
                shutil.copy2(p, Path(tmp) / item)
        r = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
             str(wheel_dir), tmp],
            capture_output=True, text=True, check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(f"building the nnunet-tubeconv wheel failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    wheels = sorted(wheel_dir.glob("nnunet_tubeconv-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel wrote no nnunet_tubeconv wheel into {wheel_dir}")
    return wheels[-1]


def trainer_source(trainer_name: str) -> Path | None:
    """The ``.py`` file defining ``trainer_name`` when it is neither nnU-Net's nor ours (a user's subclass), else
    None. Raises ``ValueError`` if the class is found but its file is not."""
    import contextlib
    import inspect
    import io

    import nnunetv2
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_tubeconv.deploy.model_folder import with_our_trainers
    from nnunet_tubeconv.trainers import trainer_folder

    with with_our_trainers(), contextlib.redirect_stdout(io.StringIO()):
        cls = recursive_find_trainer_class_by_name(trainer_name)
        search = [Path(p) for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    shipped = [Path(nnunetv2.__file__).resolve().parent, trainer_folder().resolve()]
    module = sys.modules.get(cls.__module__)
    source = None
    try:
        source = Path(inspect.getfile(module if module is not None else cls)).resolve()
    except (TypeError, OSError):
        pattern = re.compile(rf"^class\s+{re.escape(trainer_name)}\b", re.MULTILINE)
        for folder in search:  # nnU-Net's lookup dropped the module again: find the file that defines the class
            for f in sorted(folder.rglob("*.py")) if folder.is_dir() else []:
                if pattern.search(f.read_text(errors="ignore")):
                    source = f.resolve()
                    break
            if source is not None:
                break
    if source is None:
        raise ValueError(f"cannot find the source file of trainer {trainer_name}; the bundle could not load it")
    if any(source.is_relative_to(root) for root in shipped):
        return None
    return source


def _export_zip(model_path: Path, folds: list[str], checkpoint: str, output: Path) -> None:
    """nnU-Net's ``export_pretrained_model`` for one trainer-plans-configuration folder."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    trainer, plans, configuration = model_path.name.split("__")
    missing = [
        str(model_path / f"fold_{f}" / name)
        for f in folds
        for name in (checkpoint, "progress.png", "validation/summary.json")
        if not (model_path / f"fold_{f}" / name).is_file()
    ] + [str(model_path / n) for n in ("plans.json", "dataset.json", "dataset_fingerprint.json")
         if not (model_path / n).is_file()]
    if missing:
        raise ValueError(
            "nnU-Net's export_pretrained_model needs these files, which are missing (is training, with its final "
            "validation, finished?): " + ", ".join(missing)
        )
    # nnU-Net reads nnUNet_results at call time (paths._EnvPath)
    with set_environ(nnUNet_results=str(model_path.parent.parent)):
        export_pretrained_model(
            model_path.parent.name, str(output), configurations=(configuration,), trainer=trainer,
            plans_identifier=plans, folds=tuple(f if f == "all" else int(f) for f in folds), strict=True,
            save_checkpoints=(checkpoint,),
        )


DOCKERFILE = """\
# nnunet-tubeconv inference bundle: {dataset} / {trainer} / {plans} / {configuration}, folds {folds}
# Build:  docker build -t {tag} .
# Run:    docker run --rm --gpus all --network none -v "$PWD/in":/input:ro -v "$PWD/out":/output {tag}
#         (default arguments /input /output, the Grand Challenge convention; give others after the image name:
#          docker run ... {tag} /data/in /data/out --device cpu)
# The pins in requirements.txt were taken from a Python {python} environment; keep this base image's Python.
# For GPUs, PyPI's torch wheel brings its own CUDA libraries; only the NVIDIA driver is needed on the host.
FROM python:{python}-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/algorithm

COPY requirements.txt ./
COPY wheels/ ./wheels/
RUN pip install --find-links ./wheels -r requirements.txt

COPY bundle.json model.zip predict.py ./
{copy_trainers}{copy_postprocessing}
# unpack the model at build time: nothing is written at run time except the predictions
RUN python predict.py --prepare && chmod -R a+rX /opt/algorithm

# challenge platforms run the container without network access, often as a non-root user
ENTRYPOINT ["python", "/opt/algorithm/predict.py"]
CMD ["/input", "/output"]
"""

README = """\
# Inference bundle: {dataset} — {trainer} / {plans} / {configuration}

Made with `nnunet-tubeconv package` (nnunet-tubeconv {version}, nnunetv2 {nnunet}, torch {torch}).
Folds: {folds} (ensembled by nnU-Net when several); checkpoint `{checkpoint}`.

## Run without Docker

    python -m venv venv && . venv/bin/activate
    pip install --find-links wheels -r requirements.txt
    python predict.py INPUT_DIR OUTPUT_DIR          # --device cpu|cuda, --disable-tta for speed

## Run with Docker (challenge platforms)

    docker build -t {tag} .
    docker run --rm --gpus all --network none -v "$PWD/in":/input:ro -v "$PWD/out":/output {tag}

The container reads `/input` and writes `/output` by default (Grand Challenge's convention); other folders can be
given as arguments after the image name. Grand Challenge mounts inputs under `/input/images/<interface-slug>/`;
the input folder is searched recursively, so the default works there, and predictions are written flat into the
output folder (pass e.g. `/input /output/images/<output-slug>` to follow an interface's output path).

## Input and output

* Images in a format the model's reader handles ({endings}); the training data used `{file_ending}`.
* `CASE_0000{file_ending}, CASE_0001{file_ending}, ...` are the channels of one case (this model needs
  {n_channels}: {channels}); any other file name is a single-channel case.
* One segmentation per case, `CASE<same ending as the input>`, same geometry (spacing, origin, direction) as the
  input; labels {labels}.

Inference is stock nnU-Net (`nnUNetPredictor`): the same preprocessing, sliding window and test-time mirroring as
`nnUNetv2_predict`. `model.zip` is nnU-Net's own export format (`nnUNetv2_install_pretrained_model_from_zip`).
{postprocessing_note}"""


def copy_postprocessing(model_path: Path, output: Path) -> dict[str, Any] | None:
    """Copy the model folder's ``postprocessing_tubes/postprocessing.pkl`` (and its ``postprocessing.json``) into
    the bundle; return what ``bundle.json`` says about it, or None when the model folder has none."""
    from nnunet_tubeconv.deploy import bundle_predict
    from nnunet_tubeconv.postprocessing.apply import load_postprocessing, model_postprocessing
    from nnunet_tubeconv.postprocessing.determine import JSON_FILE, describe_postprocessing

    source = model_postprocessing(model_path)
    if source is None:
        return None
    fns, kwargs = load_postprocessing(source)  # refuse a broken pkl before it ships
    shutil.copy2(source, Path(output) / bundle_predict.POSTPROCESSING_PKL)
    scan = source.with_name(JSON_FILE)
    if scan.is_file():
        shutil.copy2(scan, Path(output) / JSON_FILE)
    else:  # the Dockerfile copies both: a minimal table when the scan was not kept
        (Path(output) / JSON_FILE).write_text(json.dumps({"postprocessing_kwargs": describe_postprocessing(
            fns, kwargs)}, indent=1) + "\n")
    return {"file": bundle_predict.POSTPROCESSING_PKL, "source": str(source),
            "steps": describe_postprocessing(fns, kwargs)}


def make_bundle(
    model_path: Path,
    output: Path,
    folds: list[str],
    checkpoint: str = "checkpoint_final.pth",
    wheel: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Write the bundle for ``folds`` of the trainer-plans-configuration folder ``model_path`` into ``output``.

    Loads one fold first (through nnU-Net's inference loader), so a model whose trainer or network cannot be
    rebuilt never gets packaged. Returns the ``bundle.json`` content. Raises ``ValueError`` for a bad request
    (cascade configuration, non-empty output without ``force``, missing files).
    """
    import nnunetv2  # noqa: F401 - fail early, before writing anything, if nnU-Net is missing
    import torch

    import nnunet_tubeconv
    from nnunet_tubeconv.deploy import bundle_predict
    from nnunet_tubeconv.deploy.model_folder import ModelFolder, load_trained_model

    model = load_trained_model(ModelFolder(model_path, folds[0], checkpoint))
    if model.configuration_manager.previous_stage_name is not None:
        raise ValueError(
            f"{model_path.name} is a cascade stage (needs the predictions of "
            f"{model.configuration_manager.previous_stage_name!r}); package supports single-stage configurations"
        )
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        if not force:
            raise ValueError(f"output folder {output} is not empty; choose another or pass --force")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)

    _export_zip(model_path, folds, checkpoint, output / "model.zip")
    shutil.copy2(bundle_predict.__file__, output / "predict.py")
    postprocessing = copy_postprocessing(model_path, output)
    user_trainer = trainer_source(model.trainer_name)
    if user_trainer is not None:
        # a user's trainer subclass travels with the bundle (predict.py adds trainers/ to nnUNet_extTrainer)
        (output / bundle_predict.TRAINERS_DIR).mkdir()
        shutil.copy2(user_trainer, output / bundle_predict.TRAINERS_DIR / user_trainer.name)
    wheel_dir = output / "wheels"
    wheel_dir.mkdir(exist_ok=True)
    wheel_file = build_wheel(wheel_dir).name if wheel else None
    requirements = pinned_requirements()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (output / "requirements.txt").write_text(
        f"# exact versions of nnunet-tubeconv {nnunet_tubeconv.__version__} and everything it needs, as installed "
        f"where this bundle was made (Python {python}).\n"
        "# nnunet-tubeconv itself: wheels/ (pip install --find-links wheels -r requirements.txt)\n"
        + "\n".join(requirements) + "\n"
    )
    dj = model.dataset_json
    rw_class = model.plans_manager.image_reader_writer_class
    info = {
        "dataset_name": model_path.parent.name,
        "trainer": model.trainer_name,
        "plans": model_path.name.split("__")[1],
        "configuration": model.configuration_name,
        "folds": [f if f == "all" else int(f) for f in folds],
        "checkpoint": checkpoint,
        "file_ending": dj.get("file_ending"),
        "reader_writer": rw_class.__name__,
        "supported_file_endings": list(getattr(rw_class, "supported_file_endings", [])),
        "channel_names": dj.get("channel_names", dj.get("modality")),
        "labels": dj.get("labels"),
        "nnunet_tubeconv_version": nnunet_tubeconv.__version__,
        "nnunetv2_version": next((r.split("==")[1] for r in requirements if r.startswith("nnunetv2==")), "?"),
        "torch_version": torch.__version__,
        "python": python,
        "wheel": wheel_file,
        "user_trainer_file": None if user_trainer is None else f"{bundle_predict.TRAINERS_DIR}/{user_trainer.name}",
        "postprocessing": postprocessing,
    }
    (output / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    tag = re.sub(r"[^a-z0-9_.-]+", "-", f"{info['dataset_name']}-{info['configuration']}".lower())
    fields = {
        "dataset": info["dataset_name"], "trainer": info["trainer"], "plans": info["plans"],
        "configuration": info["configuration"], "folds": ", ".join(map(str, info["folds"])), "tag": tag,
        "python": python, "version": info["nnunet_tubeconv_version"], "nnunet": info["nnunetv2_version"],
        "torch": info["torch_version"], "checkpoint": checkpoint, "endings": ", ".join(info["supported_file_endings"]),
        "file_ending": info["file_ending"], "n_channels": len(info["channel_names"] or {}),
        "channels": json.dumps(info["channel_names"]), "labels": json.dumps(info["labels"]),
        "copy_trainers": "COPY trainers/ ./trainers/\n" if user_trainer is not None else "",
        "copy_postprocessing": "COPY postprocessing.pkl postprocessing.json ./\n" if postprocessing else "",
        "postprocessing_note": (
            "\nPostprocessing: `postprocessing.pkl`, chosen on the model's cross-validation by `nnunet-tubeconv "
            "postprocess determine` (scan table in `postprocessing.json`), is applied to every segmentation; "
            "`--no-postprocessing` writes the raw ones.\n" if postprocessing else
            "\nNo postprocessing (the model folder had no postprocessing_tubes/postprocessing.pkl).\n"),
    }
    (output / "Dockerfile").write_text(DOCKERFILE.format(**fields))
    (output / "README.md").write_text(README.format(**fields))
    return info


# ---------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_tubeconv.deploy.model_folder import add_model_arguments

    add_model_arguments(parser, fold_help="fold(s) to include, e.g. -f 0 1 2 3 4 (default: every trained fold)",
                        several_folds=True)
    parser.add_argument("-o", "--output", required=True, help="bundle folder to write")
    parser.add_argument("--no-wheel", action="store_true",
                        help="do not build a wheel of nnunet-tubeconv (requirements.txt then needs an index with it)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from nnunet_tubeconv.deploy.model_folder import (
        ModelFolderError,
        available_folds,
        check_fold,
        resolve_model_path,
    )

    # ModelFolderError / ValueError (bad input, exit 2) and RuntimeError (a failed build, exit 1) go to the CLI
    path, path_fold = resolve_model_path(args.model_folder, args.trainer, args.plans, args.configuration)
    have = available_folds(path, args.checkpoint)
    folds = [check_fold(f) for f in (args.fold or ([path_fold] if path_fold else have))]
    missing = [f for f in folds if f not in have]
    if not folds or missing:
        raise ModelFolderError(
            f"{path} has no {args.checkpoint} for fold(s) {missing or 'any'}; trained folds: {have or 'none'}"
        )
    if args.configuration is not None and path.name.split("__")[-1] != args.configuration:
        raise ModelFolderError(f"{path.name} is configuration {path.name.split('__')[-1]!r}, not "
                               f"{args.configuration!r}")
    info = make_bundle(path, Path(args.output), folds, args.checkpoint, wheel=not args.no_wheel, force=args.force)
    print(f"wrote {args.output}: {info['trainer']} / {info['plans']} / {info['configuration']}, folds {info['folds']}")
    print(f"try it:  python {Path(args.output) / 'predict.py'} INPUT_DIR OUTPUT_DIR")
    return 0

"""Inference entry point of an nnunet-tubeconv challenge bundle (copied into the bundle as ``predict.py``).

Usage (inside the bundle folder or its Docker image)::

    python predict.py [INPUT_DIR] [OUTPUT_DIR] [--device auto|cpu|cuda] [--disable-tta] [--step-size 0.5]
                      [--no-postprocessing]

``INPUT_DIR`` (default ``/input``, the Grand-Challenge convention) is searched recursively for images in a format
the model's reader understands (``.nii.gz``, ``.mha``, ``.nrrd``, ... as nnU-Net's reader/writer class allows).
Files named ``CASE_0000.ext, CASE_0001.ext, ...`` are the channels of one case (nnU-Net's naming); any other file is
a single-channel case of its own (e.g. Grand Challenge's ``/input/images/<slug>/<uuid>.mha``). One segmentation per
case is written to ``OUTPUT_DIR`` (default ``/output``) as ``CASE.ext``, in the input's own format, with the input's
geometry (spacing, origin, direction), by nnU-Net's reader/writer.

When the bundle holds ``postprocessing.pkl`` (``nnunet-tubeconv package`` copies the one ``nnunet-tubeconv
postprocess determine`` chose on the model's cross-validation, ``MODEL_FOLDER/postprocessing_tubes/``), its steps
are applied to each segmentation before it is written, as ``nnUNetv2_apply_postprocessing`` would;
``--no-postprocessing`` writes the raw segmentations.

The model comes from ``model.zip`` next to this file (nnU-Net's ``export_pretrained_model`` format), unpacked into a
private results folder (``nnUNet_results/`` next to this file; ``--prepare`` does it at image build time). Inference
is nnU-Net's own (``nnUNetPredictor``: preprocessing, sliding window, mirroring TTA, resampling back), run case by
case without worker processes (containers often have a tiny ``/dev/shm``). ``nnUNet_extTrainer`` is set here so
nnU-Net finds the nnunet-tubeconv trainer classes named in the checkpoints.

This file must run with only the bundle's pinned requirements installed; it imports nothing from the bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLE_JSON = "bundle.json"
MODEL_ZIP = "model.zip"
TRAINERS_DIR = "trainers"  # a user's trainer subclass, copied by `nnunet-tubeconv package` when there is one
POSTPROCESSING_PKL = "postprocessing.pkl"  # nnU-Net's (pp_fns, pp_fn_kwargs), when the model folder had one
DEFAULT_INPUT = "/input"
DEFAULT_OUTPUT = "/output"


def bundle_info(bundle: Path = HERE) -> dict:
    """The bundle's ``bundle.json`` (data set, trainer, plans, configuration, folds, versions)."""
    return json.loads((bundle / BUNDLE_JSON).read_text())


def prepare(bundle: Path = HERE, results: Path | None = None) -> Path:
    """Unpack ``model.zip`` into ``results`` (default ``bundle/nnUNet_results``, or a temporary folder when the
    bundle is read-only) unless already there; return the trainer-plans-configuration folder."""
    info = bundle_info(bundle)
    rel = Path(info["dataset_name"]) / f"{info['trainer']}__{info['plans']}__{info['configuration']}"
    candidates = [results] if results is not None else [bundle / "nnUNet_results"]
    for root in candidates:
        if (root / rel / "plans.json").is_file():
            return root / rel
    root = candidates[0]
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="nnunet_results_"))
    with zipfile.ZipFile(bundle / MODEL_ZIP) as z:
        z.extractall(root)
    if not (root / rel / "plans.json").is_file():
        raise RuntimeError(f"{bundle / MODEL_ZIP} does not contain {rel}/plans.json")
    return root / rel


def set_environment(results_root: Path, bundle: Path = HERE) -> None:
    """Point nnU-Net at the private results folder, the bundle's own trainer file (if any) and the nnunet-tubeconv
    trainers (before importing nnU-Net)."""
    from nnunet_tubeconv.trainers import trainer_folder

    os.environ["nnUNet_results"] = str(results_root)
    folders = [str(bundle / TRAINERS_DIR)] if (bundle / TRAINERS_DIR).is_dir() else []
    folders += [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    if str(trainer_folder()) not in folders:
        folders.append(str(trainer_folder()))
    os.environ["nnUNet_extTrainer"] = os.pathsep.join(folders)
    os.environ.setdefault("nnUNet_compile", "0")
    # nnU-Net warns when these are unset although inference never reads them
    os.environ.setdefault("nnUNet_raw", str(results_root))
    os.environ.setdefault("nnUNet_preprocessed", str(results_root))


def file_ending(name: str, endings: list[str]) -> str | None:
    """The longest of ``endings`` that ``name`` ends with (so ``.nii.gz`` wins over ``.gz``), or None."""
    matches = [e for e in endings if name.lower().endswith(e.lower())]
    return max(matches, key=len) if matches else None


def group_cases(input_dir: Path, endings: list[str], n_channels: int) -> list[tuple[str, str, list[Path]]]:
    """``(case id, file ending, channel files)`` for every case under ``input_dir`` (recursive, sorted).

    ``CASE_XXXX.ext`` files with the same CASE (and folder) are one case's channels ``XXXX``; other files are
    single-channel cases. Raises ``ValueError`` for incomplete channel sets, clashing case names, a channel count
    that is not the model's, or no images at all.
    """
    groups: dict[tuple[Path, str, str], dict[int, Path]] = {}
    for f in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        ending = file_ending(f.name, endings)
        if ending is None:
            continue
        stem = f.name[: len(f.name) - len(ending)]
        m = re.fullmatch(r"(.+)_(\d{4})", stem)
        if m and not (n_channels == 1 and m.group(2) != "0000"):
            key, channel = (f.parent, m.group(1), ending), int(m.group(2))
        else:
            key, channel = (f.parent, stem, ending), 0
        if channel in groups.setdefault(key, {}):
            raise ValueError(f"two files for channel {channel} of case {key[1]!r}: {groups[key][channel]} and {f}")
        groups[key][channel] = f
    if not groups:
        raise ValueError(f"no input images with endings {endings} under {input_dir}")
    cases, seen = [], {}
    for (folder, case, ending), channels in sorted(groups.items()):
        if sorted(channels) != list(range(n_channels)):
            raise ValueError(
                f"case {case!r} in {folder} has channels {sorted(channels)} but the model needs {n_channels} "
                f"(files {case}_0000{ending} ... {case}_{n_channels - 1:04d}{ending})"
            )
        if case in seen:
            raise ValueError(f"case name {case!r} occurs in {seen[case]} and {folder}; outputs would overwrite")
        seen[case] = folder
        cases.append((case, ending, [channels[c] for c in range(n_channels)]))
    return cases


def postprocessing_steps(bundle: Path = HERE) -> tuple[list, list[dict]]:
    """The bundle's postprocessing ``(pp_fns, pp_fn_kwargs)``; two empty lists when it has none."""
    path = bundle / POSTPROCESSING_PKL
    if not path.is_file():
        return [], []
    from nnunet_tubeconv.postprocessing.apply import load_postprocessing

    return load_postprocessing(path)


def predict(input_dir: Path, output_dir: Path, device: str = "auto", tta: bool = True, step_size: float = 0.5,
            bundle: Path = HERE, postprocessing: bool = True) -> list[Path]:
    """Segment every case under ``input_dir`` into ``output_dir``; return the written files. ``postprocessing``:
    apply the bundle's ``postprocessing.pkl`` (when it has one) to each segmentation."""
    pp_fns, pp_kwargs = postprocessing_steps(bundle) if postprocessing else ([], [])
    if pp_fns:
        print(f"postprocessing: {len(pp_fns)} step(s) from {POSTPROCESSING_PKL} "
              f"({', '.join(getattr(f, '__name__', '?') for f in pp_fns)}); --no-postprocessing to turn it off",
              flush=True)
    model_folder = prepare(bundle)
    set_environment(model_folder.parent.parent, bundle)
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = bundle_info(bundle)
    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=device == "cuda", device=torch.device(device),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), tuple(info["folds"]), info["checkpoint"])
    rw_class = predictor.plans_manager.image_reader_writer_class
    endings = list(getattr(rw_class, "supported_file_endings", [predictor.dataset_json["file_ending"]]))
    n_channels = len(predictor.dataset_json.get("channel_names", predictor.dataset_json.get("modality", {})))
    cases = group_cases(Path(input_dir), endings, n_channels)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for case, ending, files in cases:
        rw = rw_class()
        image, properties = rw.read_images([str(f) for f in files])
        seg = predictor.predict_single_npy_array(image, properties, None, None, False)
        for fn, kwargs in zip(pp_fns, pp_kwargs):  # as nnU-Net's apply_postprocessing
            seg = fn(seg, **kwargs)
        out = output_dir / f"{case}{ending}"
        rw.write_seg(seg, str(out), properties)
        written.append(out)
        print(f"{case}: {', '.join(f.name for f in files)} -> {out}", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nnU-Net (nnunet-tubeconv) inference: segment every image of a folder")
    parser.add_argument("input", nargs="?", default=DEFAULT_INPUT, help=f"input folder (default {DEFAULT_INPUT})")
    parser.add_argument("output", nargs="?", default=DEFAULT_OUTPUT, help=f"output folder (default {DEFAULT_OUTPUT})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation (faster)")
    parser.add_argument("--step-size", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    parser.add_argument("--no-postprocessing", action="store_true",
                        help=f"do not apply the bundle's {POSTPROCESSING_PKL} (write the raw segmentations)")
    parser.add_argument("--prepare", action="store_true", help="only unpack the model (Docker build step) and exit")
    args = parser.parse_args(argv)
    if args.prepare:
        print(f"model ready in {prepare()}")
        return 0
    if not 0 < args.step_size <= 1:
        parser.error(f"--step-size must be in (0, 1], got {args.step_size}")
    if not Path(args.input).is_dir():
        parser.error(f"input folder {args.input} does not exist")
    try:
        written = predict(Path(args.input), Path(args.output), args.device, not args.disable_tta, args.step_size,
                          postprocessing=not args.no_postprocessing)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} segmentation(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Apply a ``postprocessing.pkl`` to a folder of predictions: ``postprocess apply``.

The same as stock ``nnUNetv2_apply_postprocessing -i PRED -o OUT -pp_pkl_file postprocessing.pkl``: every file of
``PRED`` is read with nnU-Net's reader (the one ``PRED/plans.json`` names, which ``nnUNetv2_predict`` writes there;
otherwise the one for the file ending), the steps are applied in order as ``fn(segmentation, **kwargs)``, and the
result is written with the same reader/writer and the input's geometry. It works on any nnU-Net
``postprocessing.pkl``, nnU-Net's own included.

``case_spacing=True`` (``--case-spacing``) passes each case's own voxel size (its header spacing) to the steps that
take one (:func:`~nnunet_tubeconv.postprocessing.components.remove_small_components`), so their ``min_size`` is
measured in each case's physical units instead of the data set's median voxel the determination scanned with; on a
data set whose cases share one spacing both are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnunet_tubeconv.postprocessing.components import remove_small_components
from nnunet_tubeconv.postprocessing.determine import OUTPUT_FOLDER, PKL_FILE, PostprocessingError

__all__ = [
    "apply_postprocessing",
    "apply_to_folder",
    "load_postprocessing",
    "model_postprocessing",
    "postprocess_file",
]

#: the steps whose ``voxel_size`` ``case_spacing`` replaces
_SPACING_STEPS = (remove_small_components,)


def load_postprocessing(path: str | os.PathLike) -> tuple[list[Callable], list[dict[str, Any]]]:
    """``(pp_fns, pp_fn_kwargs)`` of a ``postprocessing.pkl``; :class:`PostprocessingError` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise PostprocessingError(f"no postprocessing file {path} (postprocess determine writes "
                                  "MODEL_FOLDER/postprocessing_tubes/postprocessing.pkl)")
    try:
        with open(path, "rb") as f:
            loaded = pickle.load(f)  # nnU-Net's own format: only load files you trust
    except (ModuleNotFoundError, AttributeError) as e:
        raise PostprocessingError(f"{path} names a postprocessing function that cannot be imported here ({e}); "
                                  "install the package that wrote it") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise PostprocessingError(f"{path} is not a postprocessing.pkl: {e}") from None
    ok = (isinstance(loaded, (tuple, list)) and len(loaded) == 2 and isinstance(loaded[0], (list, tuple))
          and isinstance(loaded[1], (list, tuple)) and len(loaded[0]) == len(loaded[1])
          and all(callable(fn) for fn in loaded[0]) and all(isinstance(k, dict) for k in loaded[1]))
    if not ok:
        raise PostprocessingError(f"{path} is not nnU-Net's postprocessing format (pp_fns, pp_fn_kwargs): two lists "
                                  "of equal length, functions and their keyword arguments")
    return list(loaded[0]), [dict(k) for k in loaded[1]]


def model_postprocessing(model_folder: str | os.PathLike) -> Path | None:
    """``MODEL_FOLDER/postprocessing_tubes/postprocessing.pkl`` when ``postprocess determine`` wrote one there (what
    the challenge bundle carries and the ONNX metadata names), else None."""
    path = Path(model_folder) / OUTPUT_FOLDER / PKL_FILE
    return path if path.is_file() else None


def apply_postprocessing(segmentation, pp_fns: list[Callable], pp_fn_kwargs: list[dict[str, Any]],
                         spacing=None):
    """``fn(segmentation, **kwargs)`` for each step in order, as nnU-Net's ``apply_postprocessing``; ``spacing``
    (the case's voxel size), when given, replaces the ``voxel_size`` of the steps that take one."""
    for fn, kwargs in zip(pp_fns, pp_fn_kwargs):
        if spacing is not None and fn in _SPACING_STEPS:
            kwargs = {**kwargs, "voxel_size": list(spacing)}
        segmentation = fn(segmentation, **kwargs)
    return segmentation


def postprocess_file(job: tuple) -> str:
    """Read, postprocess and write one file: ``job = (src, dst, reader_cls, pp_fns, pp_fn_kwargs, case_spacing)``.
    A top-level function, for spawned worker processes."""
    src, dst, reader_cls, pp_fns, pp_fn_kwargs, case_spacing = job
    rw = reader_cls()
    seg, props = rw.read_seg(str(src))
    out = apply_postprocessing(seg[0], pp_fns, pp_fn_kwargs, props["spacing"] if case_spacing else None)
    rw.write_seg(out, str(dst), props)
    return str(dst)


def _reader_for(folder: Path, ending: str, example: Path):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    plans = folder / "plans.json"
    if plans.is_file():
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        try:
            return PlansManager(json.loads(plans.read_text())).image_reader_writer_class
        except Exception as e:  # noqa: BLE001 - a broken plans.json is bad input
            raise PostprocessingError(f"cannot take the reader from {plans}: {e}") from None
    try:
        return determine_reader_writer_from_file_ending(ending, str(example), verbose=False)
    except RuntimeError as e:
        raise PostprocessingError(f"no nnU-Net reader can open {example}: {e}") from None


def apply_to_folder(input_folder: str | os.PathLike, output_folder: str | os.PathLike,
                    pp_pkl: str | os.PathLike, num_processes: int = 1, case_spacing: bool = False,
                    file_ending: str | None = None, progress: bool = False) -> list[str]:
    """Postprocess every prediction of ``input_folder`` into ``output_folder`` (created); returns the written paths.

    file_ending: default ``PRED/dataset.json``'s, else the most common nnU-Net ending in the folder.
    """
    from nnunet_tubeconv.evaluation.folders import detect_file_ending, list_cases, map_cases, worker_pool

    src, dst = Path(input_folder), Path(output_folder)
    if not src.is_dir():
        raise PostprocessingError(f"prediction folder {src} does not exist or is not a folder")
    if dst.resolve() == src.resolve():
        raise PostprocessingError("the output folder must differ from the prediction folder (the raw predictions "
                                  "are kept)")
    if int(num_processes) < 1:
        raise PostprocessingError(f"the number of processes must be >= 1, got {num_processes}")
    pp_fns, pp_kwargs = load_postprocessing(pp_pkl)
    if file_ending is None and (src / "dataset.json").is_file():
        try:
            file_ending = json.loads((src / "dataset.json").read_text())["file_ending"]
        except (OSError, ValueError, KeyError, TypeError):
            file_ending = None
    try:
        ending = file_ending or detect_file_ending(src)
    except ValueError as e:
        raise PostprocessingError(str(e)) from None
    cases = list_cases(src, ending)
    if not cases:
        raise PostprocessingError(f"no {ending} files in {src}")
    reader_cls = _reader_for(src, ending, Path(next(iter(cases.values()))))
    dst.mkdir(parents=True, exist_ok=True)
    jobs = [(path, dst / Path(path).name, reader_cls, pp_fns, pp_kwargs, case_spacing) for path in cases.values()]
    with worker_pool(int(num_processes), len(jobs)) as pool:
        return map_cases(postprocess_file, jobs, pool, progress, "postprocessing")


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, help="folder of predictions (e.g. nnUNetv2_predict's -o)")
    parser.add_argument("-o", "--output", required=True, help="folder for the postprocessed predictions")
    parser.add_argument("-pp", "--pp-pkl", required=True,
                        help="postprocessing.pkl (postprocess determine's, or nnU-Net's own)")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--case-spacing", action="store_true",
                        help="measure component sizes with each case's own voxel size instead of the data set's "
                             "median voxel size in the pkl (the same on data sets of one spacing)")


def run(args: argparse.Namespace) -> int:
    written = apply_to_folder(args.input, args.output, args.pp_pkl, args.num_processes, args.case_spacing,
                              progress=True)
    fns, _ = load_postprocessing(args.pp_pkl)
    steps = ", ".join(getattr(fn, "__name__", str(fn)) for fn in fns) or "no steps (files copied unchanged)"
    print(f"postprocessed {len(written)} files into {args.output}: {steps}")
    return 0

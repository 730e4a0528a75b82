"""``nnunet-tubeconv export-onnx``: a trained model folder (any of our trainers, or vanilla nnU-Net) to ONNX.

The network is loaded exactly as nnU-Net's inference loads it (:mod:`nnunet_tubeconv.deploy.model_folder`) and
exported with dynamic batch and spatial axes, so one file serves every patch size, 2D and 3D::

    nnunet-tubeconv export-onnx $nnUNet_results/Dataset900_X/nnUNetTrainerDSConv__nnUNetPlans__2d -f 0 -o model.onnx

Choices (measured with torch 2.14 and onnxruntime 1.32; tests/unit/test_deploy_onnx.py pins them):

* **TorchScript exporter** (``dynamo=False``). The dynamo exporter (torch.export) specialises the spatial sizes of
  DSConv's custom ``autograd.Function`` to the example input, and it needs the extra ``onnxscript`` package. The
  TorchScript exporter keeps sizes symbolic for every variant: while a graph is captured the blocks leave DSConv's
  Function, DeformConv's torchvision op / Function and the compiled CPU kernels for the same maths in plain tensor
  operations by themselves (``nnunet_tubeconv.blocks.utils.tracing``; DSConv's Function would crash the
  exporter's peephole pass, torchvision's ``deform_conv2d`` has no ONNX symbolic), so nothing is patched here.
* **Opset 17** by default. DSConv's sampling exports as ``GatherElements`` with int64 indices rather than
  ``GridSample`` (the coordinate along a snake is an integer, so only the corners across the swing axes are read),
  so snake networks need neither opset 16 (2-D ``GridSample``) nor 20 (N-D ``GridSample``), in 2D and 3D alike.
  DeformConv's free offsets are sampled with ``grid_sample`` (2-D ``GridSample`` is in opset 17); a network that
  calls ``grid_sample`` on 3D data (3D ``deform``) is exported with opset 20 automatically and the command says so.
  Opset 17 is read by onnxruntime >= 1.11 and TensorRT >= 8.5; opset 20 needs onnxruntime >= 1.17.

The graph: input ``image`` ``(B, C, *S)`` float32, *preprocessed* as nnU-Net does (transpose, resampling to the
configuration's spacing, the configured normalisation); output ``logits`` ``(B, num_heads, *S)`` (no softmax /
sigmoid, like nnU-Net's networks). ``S`` must be divisible per axis by the product of the configuration's pooling
strides (``input_divisible_by`` in the metadata); nnU-Net's sliding window feeds ``patch_size``, which always is.
Everything a challenge user needs to reproduce nnU-Net's preprocessing is written into ``metadata_props``, and so is
the postprocessing the model expects (``postprocessing``: ``null``, or the steps of the model folder's
``postprocessing_tubes/postprocessing.pkl`` that ``nnunet-tubeconv postprocess determine`` chose on its
cross-validation).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_OPSET = 17
GRID_SAMPLE_3D_OPSET = 20
MAX_RELATIVE_ERROR = 1e-4
INPUT_NAME = "image"
OUTPUT_NAME = "logits"

__all__ = [
    "DEFAULT_OPSET",
    "export_model_folder",
    "export_network",
    "fix_negative_transpose_perms",
    "input_divisor",
    "max_relative_error",
    "onnx_metadata",
    "postprocessing_metadata",
    "read_metadata",
    "run_onnx",
]


def input_divisor(strides: Sequence[Sequence[int] | int], dim: int) -> list[int]:
    """Per spatial axis, the product of the stages' strides: valid input sizes are multiples of it."""
    out = [1] * dim
    for s in strides:
        s = [int(s)] * dim if isinstance(s, (int, float)) else [int(v) for v in s]
        out = [a * b for a, b in zip(out, s)]
    return out


def _uses_3d_grid_sample(network, example) -> bool:
    """Run ``network`` once and report whether ``grid_sample`` sees a 5-D input (needs ONNX opset 20)."""
    import torch
    import torch.nn.functional as F

    seen = []
    original = F.grid_sample

    def spy(inp, *args, **kwargs):
        seen.append(inp.ndim)
        return original(inp, *args, **kwargs)

    F.grid_sample = spy
    try:
        with torch.no_grad():
            network(example)
    finally:
        F.grid_sample = original
    return 5 in seen


def export_network(
    network,
    path: str | Path,
    num_input_channels: int,
    example_spatial: Sequence[int],
    opset: int | None = None,
    metadata: dict[str, str] | None = None,
    dynamic_batch: bool = True,
) -> int:
    """Export ``network`` (an nnU-Net network, deep supervision off) to ONNX at ``path``; return the opset used.

    ``example_spatial``: the spatial size traced (any valid size: the exported axes are dynamic). ``opset`` None:
    :data:`DEFAULT_OPSET`, or 20 if the network calls ``grid_sample`` on 3D data. ``metadata`` goes into the
    model's ``metadata_props`` (string values). The network itself is not modified (a copy is exported).
    """
    import copy

    import onnx
    import torch

    net = copy.deepcopy(network).eval()
    if getattr(getattr(net, "decoder", None), "deep_supervision", False):
        net.decoder.deep_supervision = False  # one output: the full-resolution logits
    dim = len(example_spatial)
    example = torch.randn(1, num_input_channels, *example_spatial)
    if opset is None:
        opset = GRID_SAMPLE_3D_OPSET if dim == 3 and _uses_3d_grid_sample(net, example) else DEFAULT_OPSET
    axes = {0: "batch"} if dynamic_batch else {}
    axes.update({i + 2: f"spatial_{i}" for i in range(dim)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        # the tracer warns about every Python bool it evaluates on a traced size (shape checks): expected here
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                net, (example,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: dict(axes)},
                do_constant_folding=True,
            )
        except Exception as e:
            raise RuntimeError(
                f"ONNX export (TorchScript exporter, opset {opset}) of {type(network).__name__} failed: "
                f"{type(e).__name__}: {str(e)[:600]}\nModules of this network: {sorted(_module_types(network))}. "
                "A block whose forward uses a custom torch.autograd.Function or an op without an ONNX symbolic must "
                "take plain tensor operations while nnunet_tubeconv.blocks.utils.tracing() is True."
            ) from e
    model = onnx.load(str(path))
    fix_negative_transpose_perms(model)
    meta = dict(metadata or {})
    meta["opset"] = str(opset)
    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            model.metadata_props.add(key=key, value=str(value))
    model.producer_name = "nnunet-tubeconv"
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return opset


def fix_negative_transpose_perms(model) -> int:
    """Make every ``Transpose`` ``perm`` of an ONNX ``model`` non-negative, in place; return how many were fixed.

    The TorchScript exporter writes ``x.movedim(-1, 1)`` as ``Transpose(perm=[0, -1, 1, 2])``, which the ONNX
    spec (and onnxruntime) reject; ``perm`` is a permutation of ``0..rank-1`` and ``rank == len(perm)``.
    """
    fixed = 0
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    graphs.append(attr.g)  # sub-graphs of If / Loop
                if node.op_type == "Transpose" and attr.name == "perm" and any(v < 0 for v in attr.ints):
                    rank = len(attr.ints)
                    attr.ints[:] = [v % rank for v in attr.ints]
                    fixed += 1
    return fixed


def _module_types(network) -> set[str]:
    return {type(m).__name__ for m in network.modules()}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def run_onnx(path: str | Path, x):
    """Run the exported model with onnxruntime (CPU) on ``x`` (numpy float32 ``(B, C, *S)``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def max_relative_error(reference, other) -> float:
    """``max|other - reference| / max|reference|`` (numpy arrays of one shape)."""
    import numpy as np

    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if reference.shape != other.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {other.shape}")
    scale = float(np.abs(reference).max())
    return float(np.abs(other - reference).max() / (scale if scale > 0 else 1.0))


def onnx_metadata(model: Any) -> dict[str, str]:
    """Everything needed to reproduce nnU-Net's preprocessing and read the output, as ONNX metadata strings.

    ``model``: a :class:`~nnunet_tubeconv.deploy.model_folder.TrainedModel`.
    """
    import nnunetv2
    import torch

    import nnunet_tubeconv

    cm = model.configuration_manager
    plans = model.plans
    dj = model.dataset_json
    arch = cm.network_arch_init_kwargs
    dim = len(cm.patch_size)
    lm = model.plans_manager.get_label_manager(dj)

    def js(v) -> str:
        return json.dumps(v, sort_keys=False)

    return {
        "nnunet_tubeconv_version": nnunet_tubeconv.__version__,
        "nnunetv2_version": getattr(nnunetv2, "__version__", _dist_version("nnunetv2")),
        "torch_version": torch.__version__,
        "dataset_name": plans.get("dataset_name", model.folder.dataset_name),
        "trainer": model.trainer_name,
        "plans_name": plans.get("plans_name", model.folder.plans_name),
        "configuration": model.configuration_name,
        "fold": model.folder.fold,
        "checkpoint": model.folder.checkpoint,
        "network_class": cm.network_arch_class_name,
        "input": f"{INPUT_NAME}: float32 (batch, {model.num_input_channels}, *spatial), preprocessed as nnU-Net does"
        + (f"; the channels after the image's are the one-hot segmentation of {cm.previous_stage_name!r}"
           if cm.previous_stage_name is not None else ""),
        "output": f"{OUTPUT_NAME}: float32 (batch, {lm.num_segmentation_heads}, *spatial); "
        + ("sigmoid per region (region-based training)" if lm.has_regions else "softmax over axis 1, argmax = label"),
        "patch_size": js(list(cm.patch_size)),
        "input_divisible_by": js(input_divisor(arch.get("strides", [[1] * dim]), dim)),
        "spacing": js(list(cm.spacing)),
        "transpose_forward": js(plans.get("transpose_forward")),
        "transpose_backward": js(plans.get("transpose_backward")),
        "normalization_schemes": js(list(cm.normalization_schemes)),
        "use_mask_for_norm": js(list(cm.use_mask_for_norm)),
        "foreground_intensity_properties_per_channel": js(plans.get("foreground_intensity_properties_per_channel")),
        "resampling_fn_data": cm.configuration.get("resampling_fn_data", ""),
        "resampling_fn_data_kwargs": js(cm.configuration.get("resampling_fn_data_kwargs")),
        "channel_names": js(dj.get("channel_names", dj.get("modality"))),
        "labels": js(dj.get("labels")),
        "regions_class_order": js(dj.get("regions_class_order")),
        "file_ending": dj.get("file_ending", ""),
        "inference_allowed_mirroring_axes": js(
            None if model.predictor.allowed_mirroring_axes is None else list(model.predictor.allowed_mirroring_axes)
        ),
        "postprocessing": js(postprocessing_metadata(model.folder.path)),
        "preprocessing": "nnU-Net v2 DefaultPreprocessor: transpose_forward, crop to nonzero, normalise per channel "
        "(normalization_schemes; CTNormalization clips to foreground percentile_00_5..percentile_99_5 then uses "
        "the foreground mean/std; ZScoreNormalization uses the image's own mean/std), resample to spacing",
    }


def postprocessing_metadata(model_folder: str | Path) -> dict[str, Any] | None:
    """What the ``postprocessing`` metadata entry says: None when the model folder has no
    ``postprocessing_tubes/postprocessing.pkl`` (``nnunet-tubeconv postprocess determine``), else the pkl's steps,
    to be applied in order to the final segmentation (argmax, back in the input's geometry), as nnU-Net's
    ``apply_postprocessing`` does."""
    from nnunet_tubeconv.postprocessing.apply import load_postprocessing, model_postprocessing
    from nnunet_tubeconv.postprocessing.determine import describe_postprocessing

    source = model_postprocessing(model_folder)
    if source is None:
        return None
    fns, kwargs = load_postprocessing(source)
    return {"file": str(source.relative_to(Path(model_folder))),
            "applies_to": "the final segmentation in the input's geometry (after argmax and resampling back), "
                          "steps in order as fn(segmentation, **kwargs): nnUNetv2_apply_postprocessing -pp_pkl_file",
            "steps": describe_postprocessing(fns, kwargs)}


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _example_spatial(patch_size: Sequence[int], divisor: Sequence[int]) -> list[int]:
    """A small valid input size: twice the divisor (a 2-voxel bottleneck), never larger than the patch."""
    return [int(min(p, 2 * d)) if p % d == 0 else int(p) for p, d in zip(patch_size, divisor)]


def export_model_folder(
    model: Any,
    output: str | Path,
    opset: int | None = None,
    check: bool = True,
    dynamic_batch: bool = True,
) -> dict[str, Any]:
    """Export a loaded :class:`~nnunet_tubeconv.deploy.model_folder.TrainedModel` to ``output``.

    With ``check``, runs onnxruntime against PyTorch on two random inputs of different valid spatial sizes and
    raises ``RuntimeError`` if the max relative error exceeds :data:`MAX_RELATIVE_ERROR`. Returns a summary dict
    (path, opset, example size, errors, metadata).
    """
    import numpy as np
    import torch

    cm = model.configuration_manager
    dim = model.dim
    divisor = input_divisor(cm.network_arch_init_kwargs.get("strides", [[1] * dim]), dim)
    example = _example_spatial(cm.patch_size, divisor)
    metadata = onnx_metadata(model)
    used = export_network(model.network, output, model.num_input_channels, example, opset, metadata, dynamic_batch)
    summary: dict[str, Any] = {"path": str(output), "opset": used, "example_spatial": example, "errors": {}}
    if check:
        rng = np.random.default_rng(0)
        sizes = [example, [e + d for e, d in zip(example, divisor)]]
        for size in sizes:
            x = rng.standard_normal((2 if dynamic_batch else 1, model.num_input_channels, *size)).astype(np.float32)
            with torch.no_grad():
                ref = model.network(torch.from_numpy(x)).numpy()
            err = max_relative_error(ref, run_onnx(output, x))
            summary["errors"]["x".join(map(str, size))] = err
            if not err <= MAX_RELATIVE_ERROR:
                raise RuntimeError(
                    f"the exported model differs from PyTorch at input size {size}: max relative error {err:.3g} > "
                    f"{MAX_RELATIVE_ERROR}"
                )
    summary["metadata"] = read_metadata(output)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_tubeconv.deploy.model_folder import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write (e.g. model.onnx)")
    parser.add_argument(
        "--opset", type=int, default=None,
        help=f"ONNX opset (default {DEFAULT_OPSET}; {GRID_SAMPLE_3D_OPSET} if the network uses 3D grid_sample)",
    )
    parser.add_argument("--static-batch", action="store_true",
                        help="fix the batch size to 1 (spatial axes stay dynamic)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch comparison")


def run(args: argparse.Namespace) -> int:
    from nnunet_tubeconv.deploy.model_folder import load_trained_model, resolve_model_folder

    if args.opset is not None and not 13 <= args.opset <= 20:
        raise ValueError(f"--opset must be between 13 and 20 (TorchScript exporter), got {args.opset}")
    # a ModelFolderError (bad input, exit 2) or a failed export (RuntimeError, exit 1) is reported by the CLI
    folder = resolve_model_folder(args.model_folder, args.fold, args.trainer, args.plans, args.configuration,
                                  args.checkpoint)
    model = load_trained_model(folder, args.configuration)
    try:
        summary = export_model_folder(model, args.output, args.opset, check=not args.no_check,
                                      dynamic_batch=not args.static_batch)
    except ImportError as e:
        raise ImportError(f"{e}; ONNX export needs the packages onnx (and onnxruntime for the check, or pass "
                          "--no-check): pip install 'nnunet-tubeconv[onnx]'") from e
    meta = summary["metadata"]
    print(f"wrote {summary['path']} (opset {summary['opset']}, trainer {meta['trainer']}, configuration "
          f"{meta['configuration']}, fold {meta['fold']})")
    print(f"input  {INPUT_NAME}: (batch, {model.num_input_channels}, *spatial), spatial divisible by "
          f"{meta['input_divisible_by']}; patch size {meta['patch_size']}")
    print(f"output {OUTPUT_NAME}: {meta['output'].split(': ', 1)[1]}")
    for size, err in summary["errors"].items():
        print(f"onnxruntime vs PyTorch at {size}: max relative error {err:.2e}")
    return 0

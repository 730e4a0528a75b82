"""Memory estimates that know the network: what nnU-Net's planner compares with its reference values.

nnU-Net's default planner (Isensee et al., Nature Methods 2021; nnunetv2 ``ExperimentPlanner``) shrinks the patch
until ``PlainConvUNet.compute_conv_feature_map_size(patch)`` (dynamic_network_architectures, "DNA") is below a
reference value tuned by hand so that batch 2 (3D) or 12 (2D) fits the GPU memory target. That reference is in
DNA's units, and DNA's count is not what autograd keeps (about half of it for a PlainConvUNet, and nothing at all
about our blocks). Our own counts (:meth:`TubeUNet.compute_conv_feature_map_size` and the blocks') are honest:
within a fraction of a percent of :class:`~nnunet_tubeconv.architectures.memory.SavedTensors` (see
``nnunet-tubeconv calibrate-memory``). So a variant's estimate on nnU-Net's scale is::

    estimate_variant(patch) = DNA_vanilla(patch) * ours_variant(patch) / ours_vanilla(patch)

``ours_vanilla`` is a TubeUNet with no block options, i.e. exactly the PlainConvUNet of the plans, counted
honestly (on nnU-Net's ResEnc presets: a TubeResEncUNet with no block options, exactly their ResidualEncoderUNet,
and DNA's count is ResidualEncoderUNet's, the scale of the ResEnc planners' reference values). The ratio is what
the variant adds on top of the very network the reference was tuned for, measured in the unit where it is true;
multiplying by DNA's vanilla count maps it back onto the reference's scale. For the vanilla network the ratio is
exactly 1, so plans for it are nnU-Net's own. Both honest counts are taken with deep supervision on (as in
training); DNA's is taken exactly as nnU-Net's planner takes it.

Known limits (shown by the calibration table): the count is in tensor elements, not bytes, so a block that keeps
float32 tensors under mixed precision (e.g. LayerNorm under CUDA autocast) costs more bytes than its element share;
parameters, gradients and optimizer state are left out, as in nnU-Net's estimate (the reference absorbs the
vanilla network's; the variants change the parameter count by a few percent).

Networks are built on PyTorch's ``meta`` device when possible (shapes only, no memory, ~20x faster), falling back
to the CPU for a module that cannot be built there.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the pseudo-variant naming nnU-Net's own network (no blocks); not a key of ``VARIANTS``
VANILLA = "vanilla"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__} in an architecture entry")


def jsonable_entry(architecture: Mapping[str, Any]) -> dict:
    """A deep, JSON-safe copy of a plans architecture entry (tuples -> lists, numpy scalars -> Python)."""
    return json.loads(json.dumps(architecture, default=_json_default))


def _check_patch(patch_size: Sequence[int], dim: int | None = None) -> tuple[int, ...]:
    try:
        patch = tuple(int(p) for p in patch_size)
    except (TypeError, ValueError):
        raise ValueError(f"patch_size must be a sequence of positive integers, got {patch_size!r}") from None
    if not patch or any(p < 1 for p in patch) or (dim is not None and len(patch) != dim):
        want = f"{dim} " if dim is not None else ""
        raise ValueError(f"patch_size must be {want}positive integers (spatial axes only), got {patch_size!r}")
    return patch


def _check_plain(architecture: Mapping[str, Any]) -> None:
    """``architecture`` must be nnU-Net's own entry: a PlainConvUNet (default planner) or a ResidualEncoderUNet
    (its ResEnc planners), the networks whose DNA counts nnU-Net's reference values were tuned for."""
    if not isinstance(architecture, Mapping) or "network_class_name" not in architecture:
        raise ValueError(f"expected a plans architecture entry (dict with 'network_class_name'), got {architecture!r}")
    from nnunet_tubeconv.architectures import HOSTS, host_class

    name = architecture["network_class_name"]
    if host_class(name) is None or host_class(name) == name:  # not a host, or already one of ours
        raise ValueError(f"the planner estimate starts from nnU-Net's own entry, one of {list(HOSTS)}, got {name!r}")


def neutral_entry(architecture: Mapping[str, Any]) -> dict:
    """Our entry with no blocks from nnU-Net's PlainConvUNet / ResidualEncoderUNet entry: the same network, counted
    honestly (TubeUNet / TubeResEncUNet with ``block_options=None``)."""
    from nnunet_tubeconv.architectures import neutral_architecture

    _check_plain(architecture)
    return neutral_architecture(jsonable_entry(architecture))


def variant_entry(architecture: Mapping[str, Any], variant: str, block_options: Mapping[str, Any] | None = None
                  ) -> dict:
    """The plans entry of ``variant`` (or of the neutral entry for ``"vanilla"``) from nnU-Net's own entry."""
    from nnunet_tubeconv.architectures import variant_architecture

    if variant == VANILLA:
        if block_options:
            raise ValueError(f"variant {VANILLA!r} places no blocks, so it takes no block options; got {block_options}")
        return neutral_entry(architecture)
    return variant_architecture(jsonable_entry(architecture), variant,
                                None if block_options is None else copy.deepcopy(dict(block_options)))


def build_network(architecture: Mapping[str, Any], input_channels: int, output_channels: int,
                  deep_supervision: bool | None = True, device: str = "meta"):
    """Build a plans entry with nnunetv2's ``get_network_from_plans`` (no weight init).

    ``device="meta"`` gives a shape-only network (enough for ``compute_conv_feature_map_size``); if a module cannot
    be built there it is built on the CPU instead. ``deep_supervision=None`` keeps the class default, as nnU-Net's
    planner does.
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    entry = jsonable_entry(architecture)

    def _build():
        return get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"], entry["_kw_requires_import"],
                                      int(input_channels), int(output_channels), allow_init=False,
                                      deep_supervision=deep_supervision)

    if device == "meta":
        try:
            with torch.device("meta"):
                return _build()
        except (NotImplementedError, RuntimeError):
            pass  # a block that computes values at construction: fall back to a real build
        device = "cpu"
    with torch.device(device):
        return _build()


def _key(architecture: Mapping[str, Any]) -> str:
    return json.dumps(architecture, sort_keys=True, default=_json_default)


@functools.lru_cache(maxsize=512)
def _count(key: str, patch: tuple[int, ...], input_channels: int, output_channels: int,
           deep_supervision: bool | None) -> int:
    net = build_network(json.loads(key), input_channels, output_channels, deep_supervision)
    return int(net.compute_conv_feature_map_size(list(patch)))


def network_estimate(architecture: Mapping[str, Any], patch_size: Sequence[int], input_channels: int,
                     output_channels: int, deep_supervision: bool | None = True) -> int:
    """``compute_conv_feature_map_size(patch_size)`` of the network a plans entry describes (cached).

    For a TubeUNet entry: elements autograd keeps for backward per batch element (honest). For a PlainConvUNet
    entry: DNA's number, on the scale of nnU-Net's reference values.
    """
    return _count(_key(architecture), _check_patch(patch_size), int(input_channels), int(output_channels),
                  deep_supervision)


def dna_vanilla_estimate(architecture: Mapping[str, Any], patch_size: Sequence[int], input_channels: int,
                         output_channels: int) -> int:
    """What nnU-Net's ``ExperimentPlanner.static_estimate_VRAM_usage`` returns for a PlainConvUNet or
    ResidualEncoderUNet entry."""
    _check_plain(architecture)
    return network_estimate(architecture, patch_size, input_channels, output_channels, deep_supervision=None)


def variant_ratio(architecture: Mapping[str, Any], variant: str, patch_size: Sequence[int], input_channels: int,
                  output_channels: int, block_options: Mapping[str, Any] | None = None) -> float:
    """``ours_variant(patch) / ours_vanilla(patch)``: how much more the variant keeps for backward (honest counts)."""
    if variant == VANILLA and not block_options:
        return 1.0
    vanilla = network_estimate(neutral_entry(architecture), patch_size, input_channels, output_channels)
    ours = network_estimate(variant_entry(architecture, variant, block_options), patch_size, input_channels,
                            output_channels)
    return ours / vanilla


def planner_estimate(architecture: Mapping[str, Any], variant: str, patch_size: Sequence[int], input_channels: int,
                     output_channels: int, block_options: Mapping[str, Any] | None = None) -> int:
    """The variant's memory estimate on nnU-Net's scale: ``DNA_vanilla * ours_variant / ours_vanilla``.

    ``architecture``: a configuration's PlainConvUNet entry (as the default planner builds it) or ResidualEncoderUNet
    entry (as the ResEnc planners build it; then ``DNA_vanilla`` is ResidualEncoderUNet's count, the scale of the
    ResEnc planners' reference values, and both honest counts are TubeResEncUNet's); ``variant``: a key
    of ``VARIANTS`` or ``"vanilla"``; ``patch_size``: spatial axes only. Comparable with
    ``ExperimentPlanner.UNet_reference_val_3d`` / ``_2d``; for ``"vanilla"`` it is DNA's own number.
    """
    dna = dna_vanilla_estimate(architecture, patch_size, input_channels, output_channels)
    ratio = variant_ratio(architecture, variant, patch_size, input_channels, output_channels, block_options)
    return round(dna * ratio)


# ---------------------------------------------------------------------------------------------------------------
# measurement and the GPU memory model


def measure_saved(architecture: Mapping[str, Any], patch_size: Sequence[int], input_channels: int,
                  output_channels: int, batch_size: int = 1, autocast_dtype: Any = None,
                  deep_supervision: bool = True, network=None) -> dict[str, int]:
    """Run one training-mode forward on zeros ``(batch_size, input_channels, *patch_size)`` on the CPU and count
    what autograd keeps for backward (``saved_tensors_hooks``, de-duplicated by storage, parameters excluded) plus
    the returned logits, which the loss keeps.

    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward under CPU autocast: a stand-in for CUDA mixed
    precision (same 2-byte storage; the two backends' op lists differ in details). Returns
    ``{"elements", "bytes", "parameters"}`` for the whole batch. Pass ``network`` to reuse a built CPU network.
    """
    import torch

    from nnunet_tubeconv.architectures.memory import SavedTensors

    patch = _check_patch(patch_size)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    net = network if network is not None else build_network(architecture, input_channels, output_channels,
                                                             deep_supervision, device="cpu")
    net.train()
    x = torch.zeros((int(batch_size), int(input_channels), *patch))
    amp = torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None)
    with amp, SavedTensors(exclude=net.parameters()) as rec:
        out = net(x)
        for o in out if isinstance(out, (list, tuple)) else [out]:
            rec.add(o)
    result = {"elements": int(rec.elements), "bytes": int(rec.nbytes),
              "parameters": int(sum(p.numel() for p in net.parameters()))}
    del out, rec
    return result


@dataclass(frozen=True)
class GpuMemoryModel:
    """Peak GPU memory of one nnU-Net training step (AMP, SGD with momentum) predicted from CPU measurements.

    ``peak = batch * saved_fp32_per_sample * amp_ratio * step_ratio + bytes_per_parameter * parameters
    + workspace_bytes``

    * ``saved_fp32_per_sample``: bytes autograd keeps for one sample (:func:`measure_saved`, float32 CPU);
    * ``amp_ratio``: the same under mixed precision over float32 (measured per variant with CPU bfloat16 autocast,
      about 0.54: most saved tensors are 2-byte, a few stay float32);
    * ``step_ratio``: peak of a whole step over what forward keeps (the activation gradients that live while saved
      tensors are being freed, the loss's buffers): measured per variant on the CPU as the process's RSS
      high-water mark during a float32 step over the saved bytes, about 1.2-1.3;
    * ``bytes_per_parameter`` 16: float32 weights, gradients and SGD momentum (12) plus autocast's 2-byte weight
      copies, rounded up;
    * ``workspace_bytes`` 1 GiB: cuDNN workspaces (``cudnn.benchmark``) and allocator rounding, a stated allowance.

    The last two are not measured here (no GPU): ``calibrate-memory --device cuda`` measures
    ``torch.cuda.max_memory_allocated`` of the real step instead.
    """

    bytes_per_parameter: float = 16.0
    workspace_bytes: float = float(1 << 30)
    default_amp_ratio: float = 0.54
    default_step_ratio: float = 1.3

    def predict(self, saved_fp32_bytes_per_sample: float, batch_size: int, parameters: int,
                amp_ratio: float | None = None, step_ratio: float | None = None) -> float:
        """Predicted peak bytes; ``amp_ratio`` / ``step_ratio`` default to the typical values above."""
        amp = self.default_amp_ratio if amp_ratio is None else float(amp_ratio)
        step = self.default_step_ratio if step_ratio is None else float(step_ratio)
        for name, v in (("amp_ratio", amp), ("step_ratio", step)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        return (int(batch_size) * float(saved_fp32_bytes_per_sample) * amp * step
                + self.bytes_per_parameter * int(parameters) + self.workspace_bytes)


def check_gpu_memory(value: Any) -> float:
    """A GPU memory target in GB as a float, or ``ValueError`` saying what is allowed."""
    try:
        gb = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"GPU memory target must be a number of GB (e.g. 8, 24, 40), got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(gb) or gb <= 0:
        raise ValueError(f"GPU memory target must be a positive, finite number of GB (e.g. 8, 24, 40), got {value!r}")
    if gb > 4096:
        raise ValueError(f"GPU memory target {value!r} GB is not plausible (more than 4 TB); give it in GB, e.g. 24")
    return gb

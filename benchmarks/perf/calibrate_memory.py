"""``nnunet-tubeconv calibrate-memory``: memory estimates against measured memory, and the plans they produce.

Three parts, all recorded in one JSON file plus a markdown table (``benchmarks/perf/results/calibration_cpu.json`` and
``.md`` from the default command ``nnunet-tubeconv calibrate-memory``):

1. **Estimate vs measured.** For vanilla nnU-Net and every variant, at two patch sizes in 3D and in 2D, the honest
   estimate (``TubeUNet.compute_conv_feature_map_size``, elements kept for backward per sample) against the bytes
   that ``saved_tensors_hooks`` sees during one training-mode forward on the CPU (float32), and under CPU bfloat16
   autocast (the stand-in for CUDA mixed precision: ``amp_ratio`` = (AMP bytes - 2 B x parameters, autocast's
   weight copies) / float32 bytes). Also the planner's estimate on nnU-Net's scale and its ratio to vanilla.
   The networks are the ones the default planner builds for the Task08-like data set below.
2. **Step ratio.** Peak memory of a whole float32 nnU-Net training step (forward with deep supervision,
   ``DC_and_CE_loss``, backward, SGD-Nesterov step) over what forward keeps, measured in a fresh process as the
   growth of its RSS high-water mark during the step (gradients and momentum buffers allocated beforehand).
3. **Plans.** A data set shaped like MSD Task08 HepaticVessel (:data:`HEPATIC_VESSEL_LIKE`: only a fingerprint,
   a dataset.json and one empty image file, in a temporary folder; nothing is preprocessed) planned by nnU-Net's
   ``ExperimentPlanner`` and by every preset at each memory target. For each planned ``3d_fullres`` the bytes kept
   for backward at the planned patch are *measured* for one sample (float32, CPU; on narrower networks when the
   full one would not fit ``--max-measure-gb``, then scaled by the honest estimate's full/narrow ratio, which part
   1 shows to be exact to a fraction of a percent), and turned into a predicted GPU peak with
   :class:`~nnunet_tubeconv.planning.estimate.GpuMemoryModel` (batch x bytes x amp_ratio x step_ratio + 16 B per
   parameter + 1 GiB) compared with the target in GiB. "Naive" is the same prediction for the variant trained on
   nnU-Net's own plans at that target (the failure the presets fix), from the honest estimate.

``--preset resenc-m resenc-l resenc-xl`` does the same on nnU-Net's residual-encoder host: parts 1-2 on the
networks nnU-Net's ResEnc planner plans (``benchmarks/perf/results/calibration_cpu_resenc.md``), part 3 for our ResEnc
presets at each preset's own target (``--targets`` overrides).

With ``--device cuda`` part 3 instead measures ``torch.cuda.max_memory_allocated`` of a real training step under
AMP (autocast float16 + GradScaler, ``cudnn.benchmark``) at the planned batch and patch. (Written for completeness;
the development machines had no GPU, so that path has not run.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_tubeconv.environ import set_environ

GIB = float(1 << 30)

#: The Task08-like fingerprint. Stated, not copied from the real data set: MSD Task08 HepaticVessel has 303
#: training CTs (portal venous phase), labels vessel and tumour, 512 x 512 slices of about 0.8 mm and slice
#: spacing mostly 5 mm with a minority of thin-slice scans; nnU-Net reports a median shape of about
#: 49 x 512 x 512 and plans 3d_fullres at 1.5 x 0.8 x 0.8 mm (its target spacing takes the 10th percentile of the
#: slice spacings of such anisotropic data). The synthetic spacings below reproduce those three facts: every case
#: covers 245 mm along z, 10% of cases have 1.5 mm slices, the median is 5.0 mm.
HEPATIC_VESSEL_LIKE: dict[str, Any] = {
    "dataset_id": 908,
    "name": "Dataset908_HepaticVesselLike",
    "num_training": 303,
    "z_spacings": {"1.5": 32, "2.5": 29, "3.0": 30, "5.0": 152, "7.5": 60},
    "inplane_spacing": 0.8,
    "inplane_size": 512,
    "z_extent_mm": 245.0,
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "Vessel": 1, "Tumour": 2},
}


def hepatic_vessel_like_fingerprint(spec: dict[str, Any] = HEPATIC_VESSEL_LIKE) -> tuple[dict, dict]:
    """``(dataset_fingerprint.json, dataset.json)`` contents for the Task08-like data set described by ``spec``."""
    spacings, shapes = [], []
    for z, count in spec["z_spacings"].items():
        for _ in range(int(count)):
            spacings.append([float(z), spec["inplane_spacing"], spec["inplane_spacing"]])
            shapes.append([round(spec["z_extent_mm"] / float(z)), spec["inplane_size"], spec["inplane_size"]])
    if len(spacings) != spec["num_training"]:
        raise ValueError(f"z_spacings count {len(spacings)} cases, num_training says {spec['num_training']}")
    fingerprint = {
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3071.0, "mean": 140.0, "median": 140.0, "min": -1024.0, "percentile_00_5": -30.0,
                  "percentile_99_5": 300.0, "std": 60.0}
        },
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": shapes,
        "spacings": spacings,
    }
    dataset_json = {
        "channel_names": dict(spec["channel_names"]),
        "labels": dict(spec["labels"]),
        "numTraining": int(spec["num_training"]),
        "file_ending": ".nii.gz",
        # the planner names a reader from the first image; the placeholder file is never opened
        "overwrite_image_reader_writer": "SimpleITKIO",
    }
    return fingerprint, dataset_json


@contextlib.contextmanager
def nnunet_paths(base: str | os.PathLike) -> Iterator[dict[str, str]]:
    """Point nnUNet_raw / nnUNet_preprocessed / nnUNet_results into ``base`` (created) for the ``with`` block."""
    paths = {k: str(Path(base) / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for v in paths.values():
        Path(v).mkdir(parents=True, exist_ok=True)
    with set_environ(**paths):
        yield paths


def write_fingerprint_dataset(raw_root: str | os.PathLike, preprocessed_root: str | os.PathLike, name: str,
                              fingerprint: dict, dataset_json: dict) -> None:
    """Just enough for nnU-Net's planner to start: raw ``dataset.json``, one placeholder image, the fingerprint."""
    raw = Path(raw_root) / name
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    (raw / "imagesTr" / f"case_000_0000{dataset_json['file_ending']}").touch()
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    pre = Path(preprocessed_root) / name
    pre.mkdir(parents=True, exist_ok=True)
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))


def plan_quietly(planner_cls: type, dataset: str | int, gpu_memory_gb: float) -> dict:
    """Run a planner's ``plan_experiment`` with its console output swallowed; returns the plans dict."""
    with contextlib.redirect_stdout(io.StringIO()):
        return planner_cls(dataset, gpu_memory_gb).plan_experiment()


def shape_divisor(architecture: dict) -> list[int]:
    """Product of the strides per axis: every patch must be a multiple of it."""
    strides = architecture["arch_kwargs"]["strides"]
    out = [1] * len(strides[0])
    for s in strides:
        out = [a * int(b) for a, b in zip(out, s)]
    return out


def narrower(architecture: dict, factor: int) -> dict:
    """The same entry with every stage ``factor`` times narrower (at least 4 channels)."""
    out = copy.deepcopy(architecture)
    out["arch_kwargs"]["features_per_stage"] = [max(4, int(f) // factor)
                                                for f in out["arch_kwargs"]["features_per_stage"]]
    return out


def _rss_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` / ``VmSize`` of this process from /proc (Linux), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _limit_memory(cap_bytes: float, threads: int) -> None:
    """In a worker: at most ``cap_bytes`` more address space (an allocation beyond fails instead of the machine
    running out of memory), and ``threads`` torch threads."""
    import resource

    import torch

    torch.set_num_threads(threads)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = int((_rss_bytes("VmSize") or 0) + cap_bytes)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _fresh(fn, *args):
    """Run ``fn(*args)`` in a new process: every measurement starts from an empty heap, and its memory goes back
    to the system when it ends."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------------------------------------------
# part 1: estimate vs measured


def estimate_row(plain: dict, variant: str, patch: Sequence[int], in_ch: int, out_ch: int, threads: int = 1,
                 cap_bytes: float = 8e9) -> dict:
    """One row of part 1, measured in a fresh process limited to ``cap_bytes``."""
    return _fresh(_estimate_row_worker, plain, variant, list(patch), in_ch, out_ch, threads, cap_bytes)


def _estimate_row_worker(plain: dict, variant: str, patch: list[int], in_ch: int, out_ch: int, threads: int,
                         cap_bytes: float) -> dict:
    import torch

    _limit_memory(cap_bytes, threads)

    from nnunet_tubeconv.planning.estimate import (
        dna_vanilla_estimate,
        measure_saved,
        network_estimate,
        planner_estimate,
        variant_entry,
    )

    entry = variant_entry(plain, variant)
    est = network_estimate(entry, patch, in_ch, out_ch)
    t0 = time.perf_counter()
    fp32 = measure_saved(entry, patch, in_ch, out_ch)
    seconds = time.perf_counter() - t0
    gc.collect()
    try:
        amp = measure_saved(entry, patch, in_ch, out_ch, autocast_dtype=torch.bfloat16)["bytes"]
    except RuntimeError as e:  # e.g. an op with no bfloat16 CPU kernel (torchvision's deform_conv2d)
        amp, amp_error = None, repr(e)
    else:
        amp_error = None
    gc.collect()
    return {
        "variant": variant, "dim": len(patch), "patch": list(patch),
        "estimate_elements": est, "measured_elements": fp32["elements"], "measured_bytes_fp32": fp32["bytes"],
        "relative_error": (est - fp32["elements"]) / fp32["elements"],
        "measured_bytes_amp": amp, "parameters": fp32["parameters"],
        "amp_ratio": None if amp is None else (amp - 2 * fp32["parameters"]) / fp32["bytes"], "amp_error": amp_error,
        "planner_estimate": planner_estimate(plain, variant, patch, in_ch, out_ch),
        "dna_vanilla_estimate": dna_vanilla_estimate(plain, patch, in_ch, out_ch),
        "forward_seconds": round(seconds, 2),
    }


# ---------------------------------------------------------------------------------------------------------------
# part 2: step ratio (fresh process, RSS high-water mark)


def _nnunet_loss_and_targets(torch, architecture: dict, patch: Sequence[int], batch: int, out_ch: int, device):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    strides = architecture["arch_kwargs"]["strides"]
    targets, size = [], list(patch)
    for i in range(len(strides) - 1):  # one target per deep-supervision output, finest first
        size = [s // int(st) for s, st in zip(size, strides[i])]
        targets.append(torch.randint(0, out_ch, (batch, 1, *size), device=device).float())
    weights = [1 / 2 ** i for i in range(len(targets))]
    weights[-1] = 0
    weights = [w / sum(weights) for w in weights]
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(loss, weights), targets


def _reset_peak_rss() -> bool:
    # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _step_worker(entry: dict, patch: list[int], in_ch: int, out_ch: int, threads: int, cap_bytes: float) -> dict:
    # ru_maxrss is no use here: Linux carries the parent's high-water mark into a spawned child
    import torch

    from nnunet_tubeconv.planning.estimate import build_network, measure_saved

    _limit_memory(cap_bytes, threads)
    net = build_network(entry, in_ch, out_ch, True, device="cpu")
    net.apply(net.initialize)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    for p in net.parameters():  # allocate what a running training already holds
        p.grad = torch.zeros_like(p)
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    loss, targets = _nnunet_loss_and_targets(torch, entry, patch, 1, out_ch, "cpu")
    x = torch.randn(1, in_ch, *patch)
    gc.collect()
    if not _reset_peak_rss():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): step ratios need Linux")
    before = _rss_bytes("VmRSS")
    out = net(x)
    value = loss(out, targets)
    value.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    opt.step()
    after = _rss_bytes("VmHWM")
    if before is None or after is None:
        raise RuntimeError("cannot read VmRSS / VmHWM from /proc/self/status: step ratios need Linux")
    loss_value = float(value.detach())
    del out, value
    gc.collect()
    saved = measure_saved(entry, patch, in_ch, out_ch, network=net)
    return {"rss_growth_bytes": int(after - before), "saved_bytes": saved["bytes"], "loss": loss_value}


def step_ratio(plain: dict, variant: str, patch: Sequence[int], in_ch: int, out_ch: int, threads: int = 1,
               cap_bytes: float = 8e9) -> dict:
    """Peak growth of a float32 training step over the bytes forward keeps (both for one sample), measured in a
    fresh process."""
    from nnunet_tubeconv.planning.estimate import variant_entry

    step = _fresh(_step_worker, variant_entry(plain, variant), list(patch), in_ch, out_ch, threads, cap_bytes)
    return {"variant": variant, "patch": list(patch), **step,
            "step_ratio": step["rss_growth_bytes"] / step["saved_bytes"]}


# ---------------------------------------------------------------------------------------------------------------
# part 3: plans, measured at the planned configuration


def gpu_step_peak(entry: dict, patch: Sequence[int], batch: int, in_ch: int, out_ch: int) -> int:
    """``torch.cuda.max_memory_allocated`` of one nnU-Net training step under AMP (after one warm-up step)."""
    import torch

    from nnunet_tubeconv.planning.estimate import build_network

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    net = build_network(entry, in_ch, out_ch, True, device="cpu").to(dev)
    net.apply(net.initialize)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    scaler = torch.amp.GradScaler("cuda")
    loss, targets = _nnunet_loss_and_targets(torch, entry, patch, batch, out_ch, dev)
    x = torch.randn(batch, in_ch, *patch, device=dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            value = loss(net(x), targets)
        scaler.scale(value).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        scaler.step(opt)
        scaler.update()

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def _measure_worker(entry: dict, patch: list[int], in_ch: int, out_ch: int, threads: int,
                    cap_bytes: float) -> dict | None:
    from nnunet_tubeconv.planning.estimate import measure_saved

    _limit_memory(cap_bytes, threads)
    t0 = time.perf_counter()
    try:
        m = measure_saved(entry, patch, in_ch, out_ch)
    except (RuntimeError, MemoryError):  # over the address-space limit
        return None
    return {**m, "seconds": round(time.perf_counter() - t0, 1)}


def measure_planned(architecture: dict, patch: Sequence[int], in_ch: int, out_ch: int, cap_bytes: float,
                    threads: int = 1) -> dict:
    """Bytes kept for backward by one sample at ``patch`` (float32, CPU, fresh process limited to ``cap_bytes``),
    on a narrower copy of the network (1/2, 1/4, ... of every width) when the full one does not fit."""
    from nnunet_tubeconv.planning.estimate import network_estimate

    full_est = network_estimate(architecture, patch, in_ch, out_ch)
    factor = 1
    while True:
        entry = narrower(architecture, factor) if factor > 1 else architecture
        est = network_estimate(entry, patch, in_ch, out_ch)
        # 1.5: forward temporaries on top of what is kept (a first try; the address-space limit is the guard)
        if est * 4 * 1.5 <= cap_bytes:
            m = _fresh(_measure_worker, entry, list(patch), in_ch, out_ch, threads, cap_bytes)
            if m is not None:
                break
        factor *= 2
        if factor > 64:
            raise ValueError(f"patch {list(patch)} does not fit --max-measure-gb even at 1/64 width")
    scale = full_est / est
    return {"width_divisor": factor, "measured_bytes": m["bytes"], "measured_elements": m["elements"],
            "bytes_per_sample": m["bytes"] * scale, "scale_to_full_width": scale, "seconds": m["seconds"]}


def _count_parameters(architecture: dict, in_ch: int, out_ch: int) -> int:
    from nnunet_tubeconv.planning.estimate import build_network

    return int(sum(p.numel() for p in build_network(architecture, in_ch, out_ch, True).parameters()))


def _config_summary(cfg: dict) -> dict:
    return {"patch": [int(p) for p in cfg["patch_size"]], "batch": int(cfg["batch_size"]),
            "spacing": [round(float(s), 4) for s in cfg["spacing"]], "data_identifier": cfg["data_identifier"]}


# ---------------------------------------------------------------------------------------------------------------
# the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="benchmarks/perf/results/calibration_cpu.json", help="JSON written here")
    parser.add_argument("--table", default=None, help="markdown table (default: --out with .md)")
    parser.add_argument("--variants", nargs="+", default=None, help="default: vanilla and every variant")
    parser.add_argument("--targets", nargs="+", type=float, default=None,
                        help="GPU memory targets in GB (default: 8 and 24 for the plain preset, each ResEnc preset's "
                             "own target: 8, 24, 40 for resenc-m, -l, -xl)")
    parser.add_argument("--preset", nargs="+", default=["plain"], metavar="PRESET",
                        help="host presets (default plain): plain, resenc-m, resenc-l, resenc-xl; the networks of "
                             "parts 1-2 are those of the first preset of each host, part 3 plans every preset")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: measure part 3 with torch.cuda.max_memory_allocated of an AMP training step")
    parser.add_argument("--max-measure-gb", type=float, default=8.0,
                        help="address space (GB) a measuring process may add (default 8); part 3 measures "
                             "narrower networks when the full one does not fit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machines)")
    parser.add_argument("--quick", action="store_true",
                        help="small patches, no step ratios, no part-3 measurement (a smoke run for tests)")


def _variants(requested: Sequence[str] | None) -> list[str]:
    from nnunet_tubeconv.planning.planners import all_variants

    valid = all_variants()
    if requested is None:
        return valid
    bad = [v for v in requested if v not in valid]
    if bad:
        raise ValueError(f"unknown variant(s) {bad}; valid variants are {valid}")
    return list(requested)


def step_ratio_key(family: str, variant: str) -> str:
    """Key of ``result["step_ratios"]``: the variant on the plain host (as before ResEnc), ``resenc:<variant>``."""
    return variant if family == "plain" else f"{family}:{variant}"


#: the default targets of the plain preset (nnU-Net's default and its ResEnc L target)
PLAIN_TARGETS_GB = (8.0, 24.0)


@dataclass(frozen=True)
class _Setting:
    """What every plan of one calibration is measured with."""

    dataset: str
    in_ch: int
    out_ch: int
    model: Any  # nnunet_tubeconv.planning.estimate.GpuMemoryModel
    device: str
    max_measure_gb: float
    threads: int
    quick: bool


def _record_reference(result: dict, host, reference: dict) -> None:
    """The summary of the plans nnU-Net's own planner of ``host`` made (plain: ``nnUNetPlans_8G``)."""
    summary = {c: _config_summary(cfg) for c, cfg in reference["configurations"].items() if "patch_size" in cfg}
    if not host.residual:
        result["nnUNetPlans_8G"] = summary
    else:
        result.setdefault("resenc_reference", {})[host.name] = {
            "plans_name": reference["plans_name"], "target_gb": host.gpu_memory_gb, "configurations": summary}


def _amp_ratios(result: dict, family: str) -> dict[str, float]:
    """variant -> the AMP ratio of parts 1-2 on the 3D network of ``family`` (plain / resenc)."""
    amp = {}
    for row in result["estimates"]:
        if row["dim"] == 3 and row["amp_ratio"] is not None and row.get("host", "plain") == family:
            amp[row["variant"]] = row["amp_ratio"]  # the larger 3D patch wins (listed last)
    return amp


def _plan_peak(row: dict, full: dict, naive_cfg: dict, variant: str, ratios: dict, gb: float, s: _Setting) -> None:
    """Part 3 for one planned variant: its parameters, the naive plan's predicted peak and the planned one's peak
    (measured on a GPU; predicted from the measured bytes per sample on CPU unless quick), into ``row``."""
    from nnunet_tubeconv.planning.estimate import network_estimate, variant_entry

    entry = full["architecture"]
    params = _count_parameters(entry, s.in_ch, s.out_ch)
    naive_entry = variant_entry(naive_cfg["architecture"], variant)
    naive_bytes = 4 * network_estimate(naive_entry, naive_cfg["patch_size"], s.in_ch, s.out_ch)
    naive_params = _count_parameters(naive_entry, s.in_ch, s.out_ch)
    row["parameters"] = params
    row["ratios_used"] = ratios
    row["naive"] = {"patch": [int(p) for p in naive_cfg["patch_size"]],
                    "batch": int(naive_cfg["batch_size"]),
                    "bytes_per_sample_estimate": naive_bytes,
                    "predicted_peak_gib": s.model.predict(naive_bytes, naive_cfg["batch_size"],
                                                          naive_params, **ratios) / GIB}
    if s.device == "cuda":
        import torch

        # the planner's prediction from the honest estimate, beside the measured peak
        planned_bytes = 4 * network_estimate(entry, full["patch_size"], s.in_ch, s.out_ch)
        row["planner_predicted_peak_gib"] = s.model.predict(planned_bytes, full["batch_size"], params, **ratios) / GIB
        peak = gpu_step_peak(entry, full["patch_size"], full["batch_size"], s.in_ch, s.out_ch)
        gc.collect()
        torch.cuda.empty_cache()
        row["measured_gpu_peak_gib"] = peak / GIB
        row["within_target"] = peak / GIB <= gb
    elif not s.quick:
        m = measure_planned(entry, full["patch_size"], s.in_ch, s.out_ch, s.max_measure_gb * 1e9, s.threads)
        row["measured"] = m
        peak = s.model.predict(m["bytes_per_sample"], full["batch_size"], params, **ratios)
        row["predicted_peak_gib"] = peak / GIB
        row["within_target"] = peak / GIB <= gb


def _part_3(result: dict, host, gb: float, variants: Sequence[str], amp: dict[str, float], s: _Setting,
            log) -> None:
    """Part 3 at one target: every variant planned by its planner on ``host``, its peak next to the target."""
    from nnunet_tubeconv.planning.planners import planner_class

    family = "resenc" if host.residual else "plain"
    vanilla_plans = plan_quietly(planner_class("vanilla", host=host.name), s.dataset, gb)
    naive_cfg = vanilla_plans["configurations"]["3d_fullres"]
    for v in variants:
        try:
            plans = plan_quietly(planner_class(v, host=host.name), s.dataset, gb)
        except (ImportError, ValueError, RuntimeError) as e:
            result["errors"].append({"part": "plans", "variant": v, "target_gb": gb, "error": repr(e),
                                     "preset": host.name})
            continue
        cfgs = {c: _config_summary(cfg) for c, cfg in plans["configurations"].items() if "patch_size" in cfg}
        row: dict[str, Any] = {"variant": v, "preset": host.name, "target_gb": gb,
                               "plans_name": plans["plans_name"], "configurations": cfgs}
        try:
            ratios = {"amp_ratio": amp.get(v), "step_ratio": result["step_ratios"].get(
                step_ratio_key(family, v), {}).get("step_ratio")}
            _plan_peak(row, plans["configurations"]["3d_fullres"], naive_cfg, v, ratios, gb, s)
        except (ImportError, ValueError, RuntimeError) as e:
            result["errors"].append({"part": "measure", "variant": v, "target_gb": gb, "error": repr(e),
                                     "preset": host.name})
        result["plans"].append(row)
        peak_txt = row.get("predicted_peak_gib", row.get("measured_gpu_peak_gib", float("nan")))
        log(f"  plan {host.name:9s} {v:9s} {gb:g} GB: 3d_fullres {cfgs['3d_fullres']['patch']} "
            f"x{cfgs['3d_fullres']['batch']}  peak {peak_txt:.2f} GiB")


def calibrate(variants: Sequence[str], targets: Sequence[float] | None, device: str = "cpu",
              max_measure_gb: float = 8.0, threads: int = 1, quick: bool = False, log=print,
              presets: Sequence[str] = ("plain",)) -> dict:
    """The three parts for each preset of ``presets`` (:data:`~nnunet_tubeconv.planning.hosts.HOST_PRESETS`):
    parts 1-2 on the networks nnU-Net's planner of the first preset of each host (plain / ResEnc) plans, part 3
    at ``targets`` (None: :data:`PLAIN_TARGETS_GB` for plain, each ResEnc preset's own target)."""
    import nnunetv2
    import torch
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets import residual_encoder_unet_planners as rp

    from nnunet_tubeconv.planning.estimate import GpuMemoryModel, check_gpu_memory
    from nnunet_tubeconv.planning.hosts import check_host

    hosts = [check_host(p) for p in presets]
    if not hosts or len({h.name for h in hosts}) != len(hosts):
        raise ValueError(f"presets must be distinct names of {['plain', 'resenc-m', 'resenc-l', 'resenc-xl']}, "
                         f"got {list(presets)}")
    targets = None if targets is None else [check_gpu_memory(t) for t in targets]
    torch.set_num_threads(threads)
    spec = HEPATIC_VESSEL_LIKE
    in_ch, out_ch = len(spec["channel_names"]), len(spec["labels"])
    model = GpuMemoryModel()
    setting = _Setting(spec["name"], in_ch, out_ch, model, device, max_measure_gb, threads, quick)
    result: dict[str, Any] = {
        "meta": {"torch": torch.__version__, "nnunetv2": getattr(nnunetv2, "__version__", "2.8.x"),
                 "python": platform.python_version(), "device": device, "threads": threads, "quick": quick,
                 "command": "nnunet-tubeconv calibrate-memory " + " ".join(sys.argv[2:]),
                 "date": time.strftime("%Y-%m-%d")},
        "dataset": {k: v for k, v in spec.items()},
        "model": {"bytes_per_parameter": model.bytes_per_parameter, "workspace_bytes": model.workspace_bytes,
                  "target_unit": "GiB"},
        "presets": [h.name for h in hosts],
        "estimates": [], "step_ratios": {}, "plans": [], "errors": [],
    }
    with tempfile.TemporaryDirectory(prefix="tubeconv_calib_") as tmp, nnunet_paths(tmp) as paths:
        fingerprint, dataset_json = hepatic_vessel_like_fingerprint(spec)
        write_fingerprint_dataset(paths["nnUNet_raw"], paths["nnUNet_preprocessed"], spec["name"], fingerprint,
                                  dataset_json)
        measured_family: set[bool] = set()
        for host in hosts:
            reference_cls = ExperimentPlanner if not host.residual else getattr(rp, host.planner)
            reference = plan_quietly(reference_cls, spec["name"], host.gpu_memory_gb)
            _record_reference(result, host, reference)
            if host.residual not in measured_family:
                measured_family.add(host.residual)
                _parts_1_2(result, reference, host.name, variants, in_ch, out_ch, threads, max_measure_gb, quick, log)
            amp = _amp_ratios(result, "resenc" if host.residual else "plain")
            host_targets = targets or (list(PLAIN_TARGETS_GB) if not host.residual else [host.gpu_memory_gb])
            for gb in host_targets:
                _part_3(result, host, gb, variants, amp, setting, log)
    return result


def _parts_1_2(result: dict, reference: dict, preset: str, variants: Sequence[str], in_ch: int, out_ch: int,
               threads: int, max_measure_gb: float, quick: bool, log) -> None:
    """Parts 1 and 2 on the 3d_fullres / 2d networks of ``reference`` (plans of nnU-Net's planner of ``preset``)."""
    from nnunet_tubeconv.planning.hosts import check_host

    residual = check_host(preset).residual
    family = "resenc" if residual else "plain"
    plain3 = reference["configurations"]["3d_fullres"]["architecture"]
    plain2 = reference["configurations"]["2d"]["architecture"]

    # part 1
    d3, d2 = shape_divisor(plain3), shape_divisor(plain2)
    if quick:
        plain3, plain2 = narrower(plain3, 8), narrower(plain2, 16)
        patches = [(plain3, [d * k for d in d3]) for k in (2, 3)] + [(plain2, [d * k for d in d2]) for k in (2, 3)]
    else:  # the bottleneck needs more than one voxel (instance norm), hence at least twice the divisor
        patches = [(plain3, [2 * d3[0], 2 * d3[1], 2 * d3[2]]), (plain3, [2 * d3[0], 5 * d3[1], 5 * d3[2]]),
                   (plain2, [2 * d for d in d2]), (plain2, [4 * d for d in d2])]
    for plain, patch in patches:
        for v in variants:
            try:
                row = estimate_row(plain, v, patch, in_ch, out_ch, threads, max_measure_gb * 1e9)
            except (ImportError, ValueError, RuntimeError) as e:
                result["errors"].append({"part": "estimates", "variant": v, "patch": patch, "error": repr(e),
                                         "host": family})
                log(f"  {v} {patch}: {e!r}")
                continue
            row["host"] = family
            result["estimates"].append(row)
            log(f"  estimate {family} {v:9s} {patch!s:16s} est {row['estimate_elements']:>12d} measured "
                f"{row['measured_elements']:>12d} ({100 * row['relative_error']:+.2f}%) amp {row['amp_ratio']}")
    # part 2
    if not quick:
        patch = [2 * d3[0], 4 * d3[1], 4 * d3[2]]  # smaller than planned: a conservative (larger) ratio
        for v in variants:
            try:
                r = step_ratio(plain3, v, patch, in_ch, out_ch, threads, max_measure_gb * 1e9)
            except (ImportError, ValueError, RuntimeError) as e:
                result["errors"].append({"part": "step_ratios", "variant": v, "error": repr(e), "host": family})
                continue
            result["step_ratios"][step_ratio_key(family, v)] = {**r, "host": family}
            log(f"  step ratio {family} {v:9s} {r['step_ratio']:.3f}")


_HOST_NAMES = {"plain": "plain", "resenc": "ResEnc"}


def _fmt_patch(p: Sequence[int]) -> str:
    return "x".join(str(int(i)) for i in p)


def markdown_table(result: dict) -> str:
    """The calibration tables (benchmarks/perf/results/calibration_cpu.md, summarised in
    docs/how-to/memory-aware-plans.md) from a :func:`calibrate` result."""
    meta = result["meta"]
    presets = result.get("presets", ["plain"])
    hosts_shown = presets != ["plain"]
    lines = [(f"Measured with `{meta['command'].strip()}` (torch {meta['torch']}, {meta['device']}, "
              f"{meta['threads']} thread(s), {meta['date']})."), ""]
    lines += [("**Estimate vs measured** (elements autograd keeps for backward per sample; float32 CPU forward with "
               "`saved_tensors_hooks`; networks of nnU-Net's default plans (ResEnc: of its first ResEnc preset "
               "planner) for the Task08-like data set, 3 classes). "
               "`planner / vanilla`: the presets' estimate on nnU-Net's scale over vanilla's. `AMP bytes`: under CPU "
               "bfloat16 autocast, over float32, autocast's weight copies excluded."), "",
              (f"| {'host | ' if hosts_shown else ''}variant | dim | patch | estimate | measured | error | "
              "planner / vanilla | AMP bytes |"),
              f"|{'---|' if hosts_shown else ''}---|---|---|---:|---:|---:|---:|---:|"]
    for r in result["estimates"]:
        ratio = r["planner_estimate"] / r["dna_vanilla_estimate"]
        host_col = (_HOST_NAMES[r.get("host", "plain")] + " | ") if hosts_shown else ""
        lines.append(f"| {host_col}{r['variant']} | {r['dim']}D | {_fmt_patch(r['patch'])} | "
                     f"{r['estimate_elements']:,} | "
                     f"{r['measured_elements']:,} | {100 * r['relative_error']:+.2f}% | {ratio:.3f} | "
                     f"{'n/a' if r['amp_ratio'] is None else format(r['amp_ratio'], '.3f')} |")
    amp_errors = dict.fromkeys(f"{r['variant']} {r['dim']}D: {r['amp_error']}" for r in result["estimates"]
                               if r.get("amp_error"))
    if amp_errors:
        lines += ["", "AMP n/a: " + "; ".join(amp_errors)]
    if result["step_ratios"]:
        lines += ["", ("**Step ratio** (float32 CPU training step, one sample: growth of the process's RSS "
                       "high-water mark over the bytes forward keeps):"), "",
                  f"| {'host | ' if hosts_shown else ''}variant | patch | kept by forward | step peak | ratio |",
                  f"|{'---|' if hosts_shown else ''}---|---|---:|---:|---:|"]
        for r in result["step_ratios"].values():
            lines.append(f"| {(_HOST_NAMES[r.get('host', 'plain')] + ' | ') if hosts_shown else ''}{r['variant']} | "
                         f"{_fmt_patch(r['patch'])} | {r['saved_bytes'] / GIB:.2f} GiB | "
                         f"{r['rss_growth_bytes'] / GIB:.2f} GiB | {r['step_ratio']:.2f} |")
    ds = result["dataset"]
    ref = result.get("nnUNetPlans_8G", {})
    z = ", ".join(f"{n} x {sp} mm" for sp, n in ds["z_spacings"].items())
    gpu = result["meta"]["device"] == "cuda"
    lines += ["", f"**Plans for a Task08 HepaticVessel-like data set** ({ds['num_training']} CTs, 3 labels, in-plane "
              f"{ds['inplane_spacing']} mm, slice spacings {z}, {ds['z_extent_mm']:g} mm along z; "
              "only a fingerprint, nothing preprocessed)."
              + ((" nnU-Net's own `ExperimentPlanner` at 8 GB: "
                  + ", ".join(f"{c} {_fmt_patch(s['patch'])} x{s['batch']}" for c, s in ref.items()) + ".")
                 if ref else "")
              + "".join(f" nnU-Net's `{r['plans_name']}` ({r['target_gb']:g} GB): "
                        + ", ".join(f"{c} {_fmt_patch(s['patch'])} x{s['batch']}"
                                    for c, s in r["configurations"].items())
                        + "." for r in result.get("resenc_reference", {}).values()),
              ("Peak: `torch.cuda.max_memory_allocated` of an AMP training step at the planned batch and patch. "
               if gpu else
               "Predicted peak = batch x measured bytes per sample x AMP ratio x step ratio + "
               f"{result['model']['bytes_per_parameter']:g} B/parameter + "
               f"{result['model']['workspace_bytes'] / GIB:g} GiB, against the target in GiB. ")
              + "Naive: the variant on the vanilla plan at that target (predicted from the estimate).", "",
              (f"| {'preset | ' if hosts_shown else ''}variant | target | 3d_fullres patch x batch | 3d_lowres | 2d | "
               f"measured / sample | {'GPU peak' if gpu else 'predicted peak'} | within | "
               "naive: vanilla plan's peak |"),
              f"|{'---|' if hosts_shown else ''}---|---|---|---|---|---:|---:|---|---:|"]
    for r in result["plans"]:
        c = r["configurations"]
        low = f"{_fmt_patch(c['3d_lowres']['patch'])} x{c['3d_lowres']['batch']}" if "3d_lowres" in c else "-"
        m = r.get("measured")
        if m:
            how = f"{m['bytes_per_sample'] / GIB:.2f} GiB" + (f" (1/{m['width_divisor']} width)"
                                                            if m["width_divisor"] > 1 else "")
        else:
            how = "-"
        peak = r.get("predicted_peak_gib", r.get("measured_gpu_peak_gib"))
        naive = r.get("naive", {}).get("predicted_peak_gib")
        preset_col = (r.get("preset", "plain") + " | ") if hosts_shown else ""
        lines.append(f"| {preset_col}{r['variant']} | {r['target_gb']:g} GB | {_fmt_patch(c['3d_fullres']['patch'])} "
                     f"x{c['3d_fullres']['batch']} | {low} | {_fmt_patch(c['2d']['patch'])} x{c['2d']['batch']} | "
                     f"{how} | {'-' if peak is None else f'{peak:.2f} GiB'} | "
                     f"{'-' if 'within_target' not in r else ('yes' if r['within_target'] else '**no**')} | "
                     f"{'-' if naive is None else f'{naive:.2f} GiB'} |")
    if result["errors"]:
        errors = dict.fromkeys(f"{e['part']} {e['variant']}: {e['error']}" for e in result["errors"])
        lines += ["", "Not measured: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    variants = _variants(args.variants)
    if args.threads < 1 or not (math.isfinite(args.max_measure_gb) and args.max_measure_gb > 0):
        raise ValueError("--threads must be >= 1 and --max-measure-gb a positive number")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda but torch sees no CUDA device")
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    result = calibrate(variants, args.targets, args.device, args.max_measure_gb, args.threads, args.quick,
                       presets=args.preset)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    table = Path(args.table) if args.table else out.with_suffix(".md")
    table.write_text(markdown_table(result))
    print(f"wrote {out} and {table}")
    return 0

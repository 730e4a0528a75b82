"""``nnunet-tubeconv bench-train``: one nnU-Net training iteration per variant, as ratios to vanilla nnU-Net.

Measured tables (how the default block placements were chosen) and the commands that gave them:
``benchmarks/perf/results/bench_train_cpu.md``.

Every network is built by nnunetv2's ``get_network_from_plans`` from the same plans entry (vanilla:
``PlainConvUNet``, or ``ResidualEncoderUNet`` with ``--host resenc-m/-l/-xl``; each variant:
:func:`nnunet_tubeconv.architectures.variant_architecture` of it). One iteration is nnUNetTrainer's ``train_step``:
forward with deep supervision, ``DC_and_CE_loss`` in a ``DeepSupervisionWrapper`` with nnU-Net's weights, backward,
clipping at 12, nnU-Net's SGD. All models run in one process; ratios divide by vanilla of the same run. Plans:
``--plan toy`` (the built-in small plan, ``--dim``), ``--plan drive2d`` / ``hepaticvessel3d`` (nnU-Net's default
plans of DRIVE- and HepaticVessel-shaped data, :mod:`nnunet_tubeconv.benchmarks.perf.realistic_plans`) or
``--plans FILE``.

* Time: median wall time (``--timer cpu``: this process's CPU time) of ``--repeats`` iterations after ``--warmup``;
  on CPU the models are timed in interleaved rounds so that load from other processes hits all of them alike.
* Peak memory on CPU: bytes autograd saves for backward in forward + loss (``saved_tensors_hooks``, de-duplicated by
  storage, parameters excluded) + parameters + gradients + SGD momentum: what coexists at the start of backward (an
  upper bound; short-lived temporaries inside a block are not in it). On GPU: ``torch.cuda.max_memory_allocated``
  over one iteration as nnU-Net trains there (autocast + GradScaler unless ``--precision fp32``), one model at a
  time (untested: the development machines had no GPU).
* ``--compile [BACKEND]``: every network under ``torch.compile``; the warm-up (>= 2 iterations) includes the
  compilation; on CPU the memory column stays the eager network's.
* Targets (CPU, default small 3D plan, time and memory): :data:`TARGETS`; the other arms are for comparison.
* :data:`EXTRA_ARMS`: ``wide`` (vanilla widened to dsconv's parameters, as ``nnUNetTrainerWide``), and vanilla's
  (``dsconv+skeleton_recall``: dsconv's) network with the loss of ``nnUNetTrainerSkeletonRecall`` /
  ``nnUNetTrainerClDice``, on synthetic vessel-tree labels. The tubed skeletons are made in nnU-Net's augmentation
  workers in parallel with the step, so they are timed apart (``skeleton_s_per_batch``, one sample and one thread
  at a time as a worker does); ``serial_time_ratio`` is the worst case of one process doing both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from typing import Any

from nnunet_tubeconv.architectures.variants import plain_conv_unet_entry
from nnunet_tubeconv.benchmarks.perf.realistic_plans import REALISTIC_PLANS, realistic_plan

TARGETS: dict[str, float] = {"dsconv": 2.0, "dlkdff": 1.5, "scse": 1.15, "skeleton_recall": 1.15}
VARIANT_ORDER = ("dsconv", "dlkdff", "scse", "deform", "tubeconv")
#: arms that are not block variants: the loss trainers' losses on vanilla (and dsconv's) network, and Wide
#: (vanilla widened to dsconv's parameters, as nnUNetTrainerWide builds it)
EXTRA_ARMS = ("wide", "skeleton_recall", "cldice", "dsconv+skeleton_recall")


def small_plan(dim: int, quick: bool) -> tuple[dict, dict]:
    """The built-in plans entry and run settings: shaped like the default planner's output, but small.

    3D: 5 stages, anisotropic first stage ([1,3,3] kernel, then [1,2,2] stride) as for thick-slice data.
    2D: 6 stages. ``quick`` shrinks widths and patch so that a test runs in seconds (ratios are then not meaningful).
    """
    if dim == 3:
        n = 5
        features = [4, 8, 16, 16, 16] if quick else [32, 64, 128, 256, 320]
        kernels = [[1, 3, 3]] + [[3, 3, 3]] * 4
        strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
        patch = [8, 32, 32] if quick else [16, 64, 64]
        batch = 1 if quick else 2
    else:
        n = 6
        features = [4, 8, 16, 16, 16, 16] if quick else [32, 64, 128, 256, 512, 512]
        kernels = [[3, 3]] * n
        strides = [[1, 1]] + [[2, 2]] * (n - 1)
        patch = [64, 64] if quick else [256, 256]
        batch = 2 if quick else 8
    entry = plain_conv_unet_entry(dim, features, strides, kernels)
    run = {"patch_size": patch, "batch_size": batch, "batch_dice": dim == 3, "input_channels": 1, "num_classes": 3,
           "plan": f"built-in small {dim}D" + (" (quick)" if quick else "")}
    return entry, run


def _plans_file(path: str, configuration: str) -> tuple[dict, dict]:
    """Architecture entry and run settings of one configuration of an nnU-Net plans file."""
    if not os.path.isfile(path):
        raise ValueError(f"plans file {path} does not exist")
    with open(path) as f:
        plans = json.load(f)
    configs = plans.get("configurations", {})
    if configuration not in configs:
        raise ValueError(f"configuration {configuration!r} not in {path}; it has {sorted(configs)}")
    cfg = dict(configs[configuration])
    # configurations may inherit from another one (e.g. 3d_cascade_fullres from 3d_fullres)
    seen = {configuration}
    while "inherits_from" in cfg:
        parent = cfg.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise ValueError(f"configuration {configuration!r} inherits from missing or cyclic {parent!r}")
        seen.add(parent)
        cfg = {**configs[parent], **cfg}
    if "architecture" not in cfg:
        raise ValueError(f"configuration {configuration!r} of {path} has no 'architecture' entry (nnU-Net < 2.3?)")
    run = {"patch_size": list(cfg["patch_size"]), "batch_size": int(cfg["batch_size"]),
           "batch_dice": bool(cfg.get("batch_dice", True)), "input_channels": 1, "num_classes": 3,
           "plan": f"{path}:{configuration}"}
    return cfg["architecture"], run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", default=",".join(VARIANT_ORDER + EXTRA_ARMS),
                        help=f"comma-separated arms to run next to vanilla: block variants {list(VARIANT_ORDER)} "
                             f"and {list(EXTRA_ARMS)} (default: all)")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=3, help="built-in plan: 3D (default) or 2D")
    parser.add_argument("--plan", choices=("toy", *REALISTIC_PLANS), default="toy",
                        help="toy: the built-in small plan (--dim); drive2d / hepaticvessel3d: nnU-Net's default "
                             "plans for a DRIVE-shaped 2D / a Task08 HepaticVessel-shaped 3D data set (patch and "
                             "batch as nnU-Net plans them; benchmarks/perf/realistic_plans.py)")
    parser.add_argument("--plans", help="use a configuration of this nnU-Net plans file instead of the built-in plan")
    parser.add_argument("--configuration", default="3d_fullres", help="configuration of --plans (default 3d_fullres)")
    parser.add_argument("--host", default="plain", metavar="HOST",
                        help="host network of the built-in plan: plain (PlainConvUNet, default) or resenc-m / resenc-l "
                             "/ resenc-xl (nnU-Net's ResidualEncoderUNet; vanilla is then ResEnc, every variant built "
                             "into it); with --plans the file's network is the host")
    parser.add_argument("--patch-size", type=int, nargs="+", help="override the patch size")
    parser.add_argument("--batch-size", type=int, help="override the batch size")
    parser.add_argument("--input-channels", type=int, help="image channels (default 1)")
    parser.add_argument("--num-classes", type=int, help="segmentation outputs including background (default 3)")
    parser.add_argument("--options", default=None,
                        help='JSON dict variant -> block options overriding the defaults, e.g. '
                             '\'{"dsconv": {"snake_kernel_size": 5}}\'')
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per model (median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per model first")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; --quick: 1)")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--precision", choices=("auto", "amp", "fp32"), default="auto",
                        help="auto (default): amp on CUDA (autocast + GradScaler, as nnU-Net trains there), fp32 on "
                             "CPU; fp32 on CUDA times the networks without autocast")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="time every network under torch.compile (backend inductor, or the one given, e.g. "
                             "aot_eager); the warm-up (>= 2 iterations) includes the compilation")
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                        help="on CPU: wall clock (default) or this process's CPU time (with --threads 1 the work done, "
                             "little moved by other processes on a shared machine)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny plan, 1 repeat, no warm-up: checks the harness, the ratios mean nothing")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if a variant misses its target")


def _ds_weights_and_scales(strides: list):
    """nnUNetTrainer._get_deep_supervision_scales / _build_loss: output weights 1/2^i, lowest 0, normalised."""
    import numpy as np

    scales = [list(i) for i in 1 / np.cumprod(np.vstack(strides), axis=0)][:-1]
    weights = np.array([1 / (2 ** i) for i in range(len(scales))])
    weights[-1] = 0
    return scales, weights / weights.sum()


def _base_loss(run: dict):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DC_and_CE_loss({"batch_dice": run["batch_dice"], "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def _tube_labels(run: dict):
    """(B, 1, *patch) float label maps: synthetic vessel trees (label 1) from nnunet_tubeconv.data.synthetic."""
    import numpy as np
    import torch

    from nnunet_tubeconv.data.synthetic import generate_case

    patch = list(run["patch_size"])
    shape = [max(p, 16) for p in patch]  # the generator's smallest side; cropped back to the patch
    crop = tuple(slice(0, p) for p in patch)
    cases = [generate_case(0, i, len(patch), shape).label[crop] for i in range(run["batch_size"])]
    return torch.from_numpy(np.stack(cases)[:, None].astype(np.float32))


def _downsampled(seg, scales: list, device):
    out = []
    for s in scales:
        step = [round(1 / f) for f in s]
        out.append(seg[(slice(None), slice(None), *[slice(None, None, k) for k in step])].contiguous().to(device))
    return out


def loss_and_targets(torch, run: dict, strides: list, device):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    scales, weights = _ds_weights_and_scales(strides)
    loss = DeepSupervisionWrapper(_base_loss(run), weights)
    g = torch.Generator().manual_seed(0)
    seg = _tube_labels(run)
    targets = _downsampled(seg, scales, device)
    data = torch.randn(run["batch_size"], run["input_channels"], *run["patch_size"], generator=g).to(device)
    return loss, data, targets


def _skeleton_targets(run: dict, strides: list, device) -> tuple[list, list[float]]:
    """Targets with the tubed-skeleton channel, and the wall time of SkeletonTargetTransform per batch (repeats).

    The transform runs on each sample as nnU-Net's DA workers run it (one sample, threadpool limited to 1).
    """
    import torch
    from threadpoolctl import threadpool_limits

    from nnunet_tubeconv.losses import SkeletonTargetTransform

    transform = SkeletonTargetTransform(labels=list(range(1, run["num_classes"])))
    seg = _tube_labels(run).to(torch.int16)
    times = []
    with threadpool_limits(limits=1, user_api=None):
        for _ in range(3):
            t0 = time.perf_counter()
            out = [transform(segmentation=seg[b])["segmentation"] for b in range(seg.shape[0])]
            times.append(time.perf_counter() - t0)
    scales, _ = _ds_weights_and_scales(strides)
    return _downsampled(torch.stack(out).float(), scales, device), times


def _on_host(entry: dict, run: dict, host: str, from_plans: bool) -> tuple[dict, dict]:
    """The plan on ``--host``: the built-in plan's ResEnc entry (same stages, nnU-Net's ResEnc blocks per stage);
    with ``--plans`` the host is the file's network, and ``--host`` must agree with it."""
    from nnunet_tubeconv.planning.hosts import check_host, resenc_entry

    h = check_host(host)
    residual = "ResidualEncoderUNet" in entry["network_class_name"]
    if from_plans:
        if host != "plain" and not residual:
            raise ValueError(f"--host {host} but the plans' network is {entry['network_class_name']}; leave --host out "
                             "with --plans (the file's network is the host) or give ResEnc plans")
        return entry, {**run, "host": "plans file"}
    if not h.residual:
        return entry, {**run, "host": h.label}
    return resenc_entry(entry, host), {**run, "host": h.label, "plan": f"{run['plan']}, {h.label} encoder"}


def _extra_arm(name: str, entry: dict, run: dict, strides: list, device, overrides: dict) -> dict:
    """Network entry, loss and targets of one of EXTRA_ARMS."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from nnunet_tubeconv.architectures import variant_architecture
    from nnunet_tubeconv.losses import ClDiceCompound, SkeletonRecallCompound

    _, weights = _ds_weights_and_scales(strides)
    if name == "wide":
        from nnunet_tubeconv.architectures.wide import match_width, widened_entry

        match = match_width(entry, "dsconv", run["input_channels"], run["num_classes"], "params",
                            options=overrides.get("dsconv"))
        return {"entry": widened_entry(entry, match.features_per_stage), "wide": match.as_dict()}
    if name == "cldice":
        return {"entry": entry, "loss": DeepSupervisionWrapper(ClDiceCompound(_base_loss(run), False), weights)}
    # skeleton_recall, dsconv+skeleton_recall
    net = variant_architecture(entry, "dsconv", overrides.get("dsconv")) if name.startswith("dsconv") else entry
    targets, times = _skeleton_targets(run, strides, device)
    loss = DeepSupervisionWrapper(SkeletonRecallCompound(_base_loss(run), 1, False), weights)
    return {"entry": net, "loss": loss, "targets": targets, "skeleton_s": statistics.median(times)}


class BenchModel:
    """One network with its optimizer, built on the CPU (the GPU path moves one model at a time)."""

    def __init__(self, name: str, entry: dict, run: dict, torch, seed: int) -> None:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        torch.manual_seed(seed)
        self.name = name
        self.entry = entry
        self.net = get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"],
                                          entry["_kw_requires_import"], run["input_channels"], run["num_classes"],
                                          allow_init=True, deep_supervision=True).train()
        self.opt = torch.optim.SGD(self.net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
        self.step_net = self.net  # what the timed steps run: the network itself or its torch.compile wrapper
        self.params = sum(p.numel() for p in self.net.parameters())
        self.loss = None  # None: the shared loss and targets
        self.targets = None
        self.extra: dict[str, Any] = {}
        self.times: list[float] = []
        self.memory = 0
        self.saved_bytes = 0
        self.state_bytes = 0


def train_step(torch, m: BenchModel, loss, data, targets, scaler=None) -> None:
    """nnUNetTrainer.train_step."""
    m.opt.zero_grad(set_to_none=True)
    if scaler is not None:
        with torch.autocast("cuda", enabled=True):
            out = m.step_net(data)
            lv = loss(out, targets)
        scaler.scale(lv).backward()
        scaler.unscale_(m.opt)
        torch.nn.utils.clip_grad_norm_(m.net.parameters(), 12)
        scaler.step(m.opt)
        scaler.update()
    else:
        out = m.step_net(data)
        lv = loss(out, targets)
        lv.backward()
        torch.nn.utils.clip_grad_norm_(m.net.parameters(), 12)
        m.opt.step()


def _cpu_memory(torch, m: BenchModel, loss, data, targets) -> None:
    from nnunet_tubeconv.architectures.memory import SavedTensors

    m.opt.zero_grad(set_to_none=True)
    with SavedTensors(exclude=list(m.net.parameters())) as rec:
        out = m.net(data)
        lv = loss(out, targets)
    lv.backward()
    torch.nn.utils.clip_grad_norm_(m.net.parameters(), 12)
    m.opt.step()

    def nbytes(t):
        return t.numel() * t.element_size()

    params = sum(nbytes(p) for p in m.net.parameters())
    grads = sum(nbytes(p.grad) for p in m.net.parameters() if p.grad is not None)
    state = sum(nbytes(v) for st in m.opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))
    m.saved_bytes = rec.nbytes
    m.state_bytes = params + grads + state
    m.memory = m.saved_bytes + m.state_bytes


def _precision(args: argparse.Namespace, device) -> str:
    """``amp`` (autocast + GradScaler, nnU-Net on GPU) or ``fp32``; nnU-Net trains on CPU without autocast."""
    precision = getattr(args, "precision", "auto")
    if precision == "auto":
        return "amp" if device.type == "cuda" else "fp32"
    if precision == "amp" and device.type != "cuda":
        raise ValueError("--precision amp is nnU-Net's GPU training (CUDA autocast + GradScaler); on CPU nnU-Net "
                         "trains in fp32: leave --precision out or give fp32")
    return precision


def _warmup(args: argparse.Namespace) -> int:
    """Warm-up iterations: with --compile at least 2 (the first compiles forward and backward)."""
    return max(args.warmup, 2) if getattr(args, "compile", None) else args.warmup


def _measure(torch, models: list[BenchModel], shared_loss, data, shared_targets, args, device) -> None:
    def lt(m):
        return (shared_loss if m.loss is None else m.loss), (shared_targets if m.targets is None else m.targets)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        for m in models:
            loss, targets = lt(m)
            m.net.to(device)
            scaler = torch.amp.GradScaler("cuda") if _precision(args, device) == "amp" else None
            for _ in range(_warmup(args)):
                train_step(torch, m, loss, data, targets, scaler)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            train_step(torch, m, loss, data, targets, scaler)
            torch.cuda.synchronize()
            m.memory = torch.cuda.max_memory_allocated()
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                train_step(torch, m, loss, data, targets, scaler)
                torch.cuda.synchronize()
                m.times.append(time.perf_counter() - t0)
            m.net.to("cpu")
            m.opt.state.clear()  # free the device copies of the momentum buffers
            torch.cuda.empty_cache()
        return
    for m in models:
        loss, targets = lt(m)
        for _ in range(_warmup(args)):
            train_step(torch, m, loss, data, targets)
        _cpu_memory(torch, m, loss, data, targets)  # the eager network: saved-tensor hooks see no compiled graph
    # CPU time of this process (--timer cpu): with --threads 1 the work done, little moved by other processes' load
    clock = time.process_time if getattr(args, "timer", "wall") == "cpu" else time.perf_counter
    for _ in range(args.repeats):
        for m in models:
            loss, targets = lt(m)
            t0 = clock()
            train_step(torch, m, loss, data, targets)
            m.times.append(clock() - t0)


def _arms_and_options(args: argparse.Namespace) -> tuple[list[str], dict]:
    """The arms of ``--variants`` and the block options of ``--options``; ValueError naming what is allowed."""
    from nnunet_tubeconv.architectures import VARIANTS

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS and v not in EXTRA_ARMS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; valid are {sorted(VARIANTS)} and {list(EXTRA_ARMS)}")
    try:
        overrides = json.loads(args.options) if args.options else {}
    except json.JSONDecodeError as e:
        raise ValueError(
            "--options must be a JSON dict variant -> block options, e.g. "
            f"'{{\"dsconv\": {{\"snake_kernel_size\": 5}}}}'; could not parse {args.options!r}: {e}"
        ) from None
    if not isinstance(overrides, dict) or set(overrides) - set(VARIANTS):
        raise ValueError(f"--options must be a JSON dict whose keys are variants {sorted(VARIANTS)}, got {overrides}")
    return variants, overrides


def _device(torch, args: argparse.Namespace):
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch.cuda is not available")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def _plan(args: argparse.Namespace) -> tuple[dict, dict]:
    """Architecture entry and run settings of the plan the arguments name (``--plan``, ``--plans``, ``--host``) with
    the patch, batch, channel and class overrides; ValueError when they do not fit together."""
    plan = getattr(args, "plan", "toy")
    if args.plans and plan != "toy":
        raise ValueError(f"--plans and --plan {plan} both name a plan; give one of them")
    if args.plans:
        entry, run = _plans_file(args.plans, args.configuration)
    elif plan != "toy":
        entry, run = realistic_plan(plan)
    else:
        entry, run = small_plan(args.dim, args.quick)
    entry, run = _on_host(entry, run, getattr(args, "host", "plain"), bool(args.plans))
    if args.patch_size:
        run["patch_size"] = list(args.patch_size)
    if args.batch_size:
        run["batch_size"] = args.batch_size
    if args.input_channels:
        run["input_channels"] = args.input_channels
    if args.num_classes:
        run["num_classes"] = args.num_classes
    strides = entry["arch_kwargs"]["strides"]
    if len(run["patch_size"]) != len(strides[0]):
        raise ValueError(f"patch size {run['patch_size']} does not match the plan's {len(strides[0])}D strides")
    total = [math.prod(s[d] for s in strides) for d in range(len(run["patch_size"]))]
    if any(p % t for p, t in zip(run["patch_size"], total)):
        raise ValueError(f"patch size {run['patch_size']} must be divisible by the total strides {total}")
    return entry, run


def _models(torch, entry: dict, run: dict, device, variants: list[str], overrides: dict,
            seed: int) -> list[BenchModel]:
    """Vanilla, then one model per arm (a block variant of the entry, or one of :data:`EXTRA_ARMS`)."""
    from nnunet_tubeconv.architectures import variant_architecture

    strides = entry["arch_kwargs"]["strides"]
    models = [BenchModel("vanilla", entry, run, torch, seed)]
    for v in variants:
        if v in EXTRA_ARMS:
            arm = _extra_arm(v, entry, run, strides, device, overrides)
            m = BenchModel(v, arm["entry"], run, torch, seed)
            m.loss, m.targets = arm.get("loss"), arm.get("targets")
            m.extra = {k: arm[k] for k in ("wide", "skeleton_s") if k in arm}
        else:
            m = BenchModel(v, variant_architecture(entry, v, overrides.get(v)), run, torch, seed)
        models.append(m)
    return models


def _compile(torch, models: list[BenchModel], backend: str) -> None:
    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ValueError(f"--compile {backend}: not a torch.compile backend here; allowed: {backends}")
    for m in models:
        m.step_net = torch.compile(m.net, backend=backend)


def _result_row(m: BenchModel, base: BenchModel, base_time: float, device) -> dict[str, Any]:
    """One arm's row of the report: its time and memory, their ratios to vanilla, and its target."""
    t = statistics.median(m.times)
    time_ratio, mem_ratio = t / base_time, m.memory / base.memory
    target = TARGETS.get(m.name)
    row = {"variant": m.name, "time_s": t, "time_ratio": time_ratio, "memory_bytes": m.memory,
           "memory_ratio": mem_ratio, "params": m.params, "target": target,
           "pass": None if target is None else bool(time_ratio <= target and mem_ratio <= target)}
    if device.type == "cpu":
        row["saved_bytes"], row["state_bytes"] = m.saved_bytes, m.state_bytes
    if "block_options" in m.entry["arch_kwargs"]:
        row["block_options"] = m.entry["arch_kwargs"]["block_options"]
    if "wide" in m.extra:
        row["wide"] = m.extra["wide"]
    if "skeleton_s" in m.extra:
        # the skeletons are made in nnU-Net's DA worker processes, in parallel with the training step: hidden
        # while the workers keep up; "serial" is the worst case (nnUNet_n_proc_DA=0: one process does both)
        row["skeleton_s_per_batch"] = m.extra["skeleton_s"]
        row["serial_time_ratio"] = (t + m.extra["skeleton_s"]) / base_time
    return row


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by parsed ``args``; returns the JSON-able report."""
    import torch

    if args.quick:
        args.repeats, args.warmup = 1, 0
        if args.threads is None:
            args.threads = 1
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants, overrides = _arms_and_options(args)
    device = _device(torch, args)
    entry, run = _plan(args)
    loss, data, targets = loss_and_targets(torch, run, entry["arch_kwargs"]["strides"], device)
    models = _models(torch, entry, run, device, variants, overrides, args.seed)
    precision = _precision(args, device)
    if getattr(args, "compile", None):
        _compile(torch, models, args.compile)
    load_before = os.getloadavg()
    _measure(torch, models, loss, data, targets, args, device)
    load = {"before": list(load_before), "after": list(os.getloadavg())}  # 1/5/15-minute load averages (uptime)

    base_time = statistics.median(models[0].times)
    rows = [_result_row(m, models[0], base_time, device) for m in models]
    memory_measure = (
        f"torch.cuda.max_memory_allocated over one iteration ({precision})" if device.type == "cuda" else
        "bytes saved for backward in forward+loss (saved_tensors_hooks, de-duplicated by storage) "
        "+ parameters + gradients + SGD momentum"
    )
    return {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "threads": torch.get_num_threads(), "plan": run["plan"], "host": run.get("host"),
            "patch_size": run["patch_size"],
            "batch_size": run["batch_size"], "input_channels": run["input_channels"],
            "num_classes": run["num_classes"], "repeats": args.repeats, "warmup": _warmup(args),
            "precision": precision, "compile": getattr(args, "compile", None),
            "timer": getattr(args, "timer", "wall"), "memory_measure": memory_measure, "torch": torch.__version__,
            "load_average": load, "results": rows}


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    mode = report.get("precision", "fp32") + (f", torch.compile {report['compile']}" if report.get("compile") else "")
    table = Table(title=f"One nnU-Net training iteration vs vanilla ({report['plan']}, patch {report['patch_size']}, "
                        f"batch {report['batch_size']}, {report['device']}, {report['threads']} thread(s), {mode})")
    for col in ("variant", "time/iter", "x vanilla", "peak memory", "x vanilla", "params", "target", "status"):
        table.add_column(col, justify="left" if col in ("variant", "status") else "right")
    for r in report["results"]:
        status = "" if r["pass"] is None else ("[green]PASS[/green]" if r["pass"] else "[red]FAIL[/red]")
        table.add_row(r["variant"], f"{r['time_s'] * 1000:.1f} ms", f"{r['time_ratio']:.2f}",
                      f"{r['memory_bytes'] / 2**20:.1f} MiB", f"{r['memory_ratio']:.2f}",
                      f"{r['params'] / 1e6:.3f} M", "" if r["target"] is None else f"<= {r['target']:g}x", status)
    console = Console()
    if not console.is_terminal:  # keep the table on one line per row in logs and pipes
        console = Console(width=140)
    console.print(table)
    console.print(f"peak memory = {report['memory_measure']}; time ({report.get('timer', 'wall')}) = median of "
                  f"{report['repeats']} iteration(s) "
                  f"after {report['warmup']} warm-up; targets apply to time and memory on the default 3D plan on CPU")
    if "load_average" in report:
        la = report["load_average"]
        console.print("load average (1/5/15 min) before: " + " ".join(f"{v:.2f}" for v in la["before"])
                      + ", after: " + " ".join(f"{v:.2f}" for v in la["after"]), highlight=False)
    from nnunet_tubeconv.architectures import DEFAULT_BLOCK_OPTIONS

    for r in report["results"]:
        if "skeleton_s_per_batch" in r:
            console.print(f"  {r['variant']}: tubed skeletons {r['skeleton_s_per_batch'] * 1000:.1f} ms per batch "
                          f"in the DA workers (one process per sample, not in the time above); if done serially "
                          f"(nnUNet_n_proc_DA=0): {r['serial_time_ratio']:.2f}x vanilla", highlight=False)
        if "wide" in r:
            w = r["wide"]
            console.print(f"  {r['variant']}: widths {w['base_features_per_stage']} -> {w['features_per_stage']}, "
                          f"{w['achieved'] / 1e6:.3f} M parameters vs dsconv's {w['target'] / 1e6:.3f} M",
                          highlight=False)
        if "block_options" in r:
            o = r["block_options"]
            shown = {k: v for k, v in o.items() if v != DEFAULT_BLOCK_OPTIONS[k]}
            if o["dlk_encoder_stages"]:  # which DLK selection ran is part of every D-Net result
                shown["dlk_mode"] = o["dlk_mode"]
            if o["conv_block"] == "dsc":
                shown["snake_kernel_size"] = o["snake_kernel_size"]
            console.print(f"  {r['variant']}: " + ", ".join(f"{k}={v}" for k, v in shown.items()), highlight=False)


def run(args: argparse.Namespace) -> int:
    report = benchmark(args)  # a ValueError (bad arguments or plans) is reported by the CLI with exit status 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    if args.strict and any(r["pass"] is False for r in report["results"]):
        return 1
    return 0

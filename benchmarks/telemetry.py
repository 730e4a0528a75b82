"""What every arm trainer of the benchmark harness adds to its base trainer: a seed and cost telemetry.

The harness generates one class per (trainer, budget, seed) (:mod:`nnunet_tubeconv.benchmarks.arms`); each is
``class T_b_s<seed>(HarnessTelemetry, T)`` and calls :func:`seed_everything` first thing in ``__init__``.
:class:`HarnessTelemetry` writes :data:`TELEMETRY_FILE` into the fold folder when training ends: parameter count,
network class and its ``block_options``, device, peak GPU memory (``torch.cuda.max_memory_allocated``), the median
time of ``train_step`` and the schedule. It changes nothing in training. A training resumed with ``--c`` adds a
session: the peak memory is the largest of all sessions, the step count their sum.

The generated module imports this one, so the nnUNetv2_train subprocesses need nnunet-tubeconv installed (they need
it anyway for the network).
"""

from __future__ import annotations

import importlib
import json
import os
import random
import sys
import time
from typing import Any

import numpy as np
import torch

TELEMETRY_FILE = "harness_telemetry.json"


def import_from_folder(module: str, folder: str) -> Any:
    """Import ``module`` with ``folder`` on ``sys.path``: a user's trainer lives in one of their nnUNet_extTrainer
    folders, importable relative to it."""
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(module)


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (initial weights; sampling on CPU with ``nnUNet_n_proc_DA=0``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def merge_telemetry(old: dict[str, Any], *, parameters: int | None, network_class: str | None,
                    block_options: Any, device: str, device_name: str | None, torch_threads: int,
                    peak_gpu_memory_bytes: int | None, step_times: list[float], num_epochs: int,
                    num_iterations_per_epoch: int, num_val_iterations_per_epoch: int, seed: int | None
                    ) -> dict[str, Any]:
    """The telemetry record of one training session merged with the record ``old`` of earlier sessions.

    Peak memory is the largest over the sessions; the median step time is this session's when it timed steps,
    else the earlier one; steps timed and sessions add up.
    """
    times = sorted(step_times)
    peaks = [v for v in (peak_gpu_memory_bytes, old.get("peak_gpu_memory_bytes")) if v is not None]
    return {
        "parameters": parameters,
        "network_class": network_class,
        "block_options": dict(block_options) if block_options is not None else None,
        "device": device,
        "device_name": device_name,
        "torch_threads": torch_threads,
        "peak_gpu_memory_bytes": max(peaks, default=None),
        "train_step_time_s_median": times[len(times) // 2] if times else old.get("train_step_time_s_median"),
        "train_steps_timed": len(times) + int(old.get("train_steps_timed", 0)),
        "num_epochs": num_epochs,
        "num_iterations_per_epoch": num_iterations_per_epoch,
        "num_val_iterations_per_epoch": num_val_iterations_per_epoch,
        "seed": seed,
        "sessions": int(old.get("sessions", 0)) + 1,
    }


class HarnessTelemetry:
    """Mix-in before an nnUNetTrainer: records cost numbers into :data:`TELEMETRY_FILE` in the fold folder."""

    def on_train_start(self):
        super().on_train_start()
        self._harness_step_times = []
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        net = self.network.module if hasattr(self.network, "module") else self.network
        net = getattr(net, "_orig_mod", net)  # torch.compile's wrapper
        self._harness_parameters = int(sum(p.numel() for p in net.parameters()))
        self._harness_network = type(net).__module__ + "." + type(net).__qualname__

    def train_step(self, batch):
        t0 = time.perf_counter()
        out = super().train_step(batch)  # returns the loss as numpy, so the step has finished on the device
        self._harness_step_times.append(time.perf_counter() - t0)
        return out

    def on_train_end(self):
        super().on_train_end()
        path = os.path.join(self.output_folder, TELEMETRY_FILE)
        peak = None
        if self.device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(self.device))
            self.print_to_log_file(f"peak GPU memory allocated by torch: {peak / 2 ** 30:.3f} GiB")
        kwargs = self.configuration_manager.network_arch_init_kwargs
        block_options = kwargs.get("block_options") if isinstance(kwargs, dict) else None
        if block_options is None:
            block_options = getattr(type(self), "block_options", None)
        telemetry = merge_telemetry(
            _read_json(path),
            parameters=getattr(self, "_harness_parameters", None),
            network_class=getattr(self, "_harness_network", None),
            block_options=block_options,
            device=str(self.device),
            device_name=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            torch_threads=torch.get_num_threads(),
            peak_gpu_memory_bytes=peak,
            step_times=getattr(self, "_harness_step_times", []),
            num_epochs=self.num_epochs,
            num_iterations_per_epoch=self.num_iterations_per_epoch,
            num_val_iterations_per_epoch=self.num_val_iterations_per_epoch,
            seed=getattr(type(self), "harness_seed", None),
        )
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(telemetry, f, indent=1)
        os.replace(tmp, path)

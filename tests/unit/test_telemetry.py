"""The arm trainers' telemetry mix-in and seeding (nnunet_tubeconv.benchmarks.telemetry), on a stand-in trainer."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import torch

from nnunet_tubeconv.benchmarks.telemetry import (
    TELEMETRY_FILE,
    HarnessTelemetry,
    merge_telemetry,
    seed_everything,
)

SCHEDULE = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1}


def _session(old, times, peak=None, seed=7):
    return merge_telemetry(old, parameters=10, network_class="m.Net", block_options={"a": 1}, device="cpu",
                           device_name=None, torch_threads=1, peak_gpu_memory_bytes=peak, step_times=times,
                           seed=seed, **SCHEDULE)


def test_merge_first_session_and_a_resumed_one():
    first = _session({}, [0.3, 0.1, 0.2], peak=200)
    assert first["train_step_time_s_median"] == 0.2 and first["train_steps_timed"] == 3
    assert first["sessions"] == 1 and first["peak_gpu_memory_bytes"] == 200 and first["block_options"] == {"a": 1}
    second = _session(first, [], peak=100)  # a resumed session that timed no step keeps the earlier median
    assert second["train_step_time_s_median"] == 0.2 and second["train_steps_timed"] == 3
    assert second["sessions"] == 2 and second["peak_gpu_memory_bytes"] == 200
    third = _session(second, [0.5, 0.7], peak=None)
    assert third["train_step_time_s_median"] == 0.7 and third["train_steps_timed"] == 5
    assert third["peak_gpu_memory_bytes"] == 200 and third["sessions"] == 3
    assert _session({}, [])["peak_gpu_memory_bytes"] is None


class _StandInTrainer:
    """What HarnessTelemetry uses of an nnUNetTrainer."""

    block_options = None
    harness_seed = 4

    def __init__(self, folder):
        self.output_folder = str(folder)
        self.device = torch.device("cpu")
        self.network = torch.nn.Linear(3, 2)  # 8 parameters
        self.configuration_manager = SimpleNamespace(network_arch_init_kwargs={"block_options": {"scse_mode": "add"}})
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 3, 1
        self.calls = []

    def on_train_start(self):
        self.calls.append("start")

    def train_step(self, batch):
        self.calls.append(batch)
        return batch

    def on_train_end(self):
        self.calls.append("end")

    def print_to_log_file(self, *args, **kwargs):
        raise AssertionError("no GPU: nothing to log")


class _Arm(HarnessTelemetry, _StandInTrainer):
    pass


def test_mixin_writes_the_record_and_changes_nothing(tmp_path):
    arm = _Arm(tmp_path)
    for session in (1, 2):
        arm.on_train_start()
        assert [arm.train_step(i) for i in range(3)] == [0, 1, 2]  # the base's results pass through
        arm.on_train_end()
        rec = json.loads((tmp_path / TELEMETRY_FILE).read_text())
        assert rec["sessions"] == session and rec["train_steps_timed"] == 3 * session
    assert arm.calls == ["start", 0, 1, 2, "end"] * 2
    assert rec["parameters"] == 8 and rec["network_class"] == "torch.nn.modules.linear.Linear"
    assert rec["block_options"] == {"scse_mode": "add"} and rec["seed"] == 4 and rec["device"] == "cpu"
    assert rec["num_epochs"] == 2 and rec["peak_gpu_memory_bytes"] is None
    assert 0 <= rec["train_step_time_s_median"] < 1
    assert not list(tmp_path.glob("*.tmp"))


def test_seed_everything_seeds_all_three_generators():
    seed_everything(11)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(11)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert torch.initial_seed() == 11

"""nnU-Net's side of the tests: its folder variables and environment, its console scripts, and a trainer instance in
the test process on a stub of preprocessed data. The end-to-end workflow through its entry points is in
:mod:`support.e2e`."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from support.plans import TINY_DATASET_JSON, tiny_plans

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")



def nnunet_folders(base: Path) -> dict[str, str]:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results under ``base`` (created)."""
    out = {}
    for var in NNUNET_PATH_VARIABLES:
        d = base / var
        d.mkdir(parents=True, exist_ok=True)
        out[var] = str(d)
    return out


def nnunet_env(base: Path, ext_trainer: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
    """Environment for nnU-Net console scripts: folders under ``base``, one worker everywhere (2-core CI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(nnunet_folders(base))
    env.update(
        {
            # 0 -> nnU-Net's single-threaded augmenter; the planner needs >= 1 (it calls torch.set_num_threads)
            "nnUNet_n_proc_DA": "0",
            "nnUNet_def_n_proc": "1",
            "nnUNet_compile": "0",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if ext_trainer:
        env["nnUNet_extTrainer"] = os.pathsep.join(str(p) for p in ext_trainer)
    return env


def console_script(name: str) -> str:
    """Path of an installed console script, preferring the running interpreter's environment."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name!r} not found next to {sys.executable} nor on PATH")
    return found


def run_console(
    args: Sequence[str], env: dict[str, str], timeout: float = 600, expect_ok: bool = True, log: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``args`` (first item a console-script name; items may be ints or paths) and fail the test with the
    output's tail if it fails (unless ``expect_ok=False``). ``log``: append the command and its output there."""
    args = [str(a) for a in args]
    cmd = [console_script(args[0]), *args[1:]]
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    r.wall_time = time.perf_counter() - t0
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(args)}  # {r.wall_time:.1f} s, exit {r.returncode}\n{r.stdout}\n{r.stderr}\n")
    if expect_ok and r.returncode != 0:
        tail = (r.stdout + "\n" + r.stderr)[-6000:]
        pytest.fail(f"{' '.join(args)} exited with {r.returncode}:\n{tail}")
    return r


# ---------------------------------------------------------------------------------------------------------------
# a trainer instance in the test process, on a stub of preprocessed data


def point_nnunet_at(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nnU-Net's folder variables set, for this test, to folders under ``root`` (not created)."""
    for var in NNUNET_PATH_VARIABLES:
        monkeypatch.setenv(var, str(root / var))


def stub_preprocessed(root: Path, monkeypatch: pytest.MonkeyPatch, plans: dict, configuration: str = "2d") -> None:
    """nnU-Net's folders under ``root`` (:func:`point_nnunet_at`), the preprocessed data folder of ``plans``'
    ``configuration`` holding one empty case file: it lets nnU-Net's trainer infer its dataset class (never read)."""
    point_nnunet_at(root, monkeypatch)
    data = (root / "nnUNet_preprocessed" / plans["dataset_name"]
            / plans["configurations"][configuration]["data_identifier"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "case_000.b2nd").write_bytes(b"")


def cpu_trainer(cls: type, root: Path, monkeypatch: pytest.MonkeyPatch, configuration: str = "2d",
                dataset_json: dict = TINY_DATASET_JSON, plans: dict | None = None, continue_training: bool = False):
    """A trainer of class ``cls`` for fold 0 on CPU, made as ``nnUNetv2_train`` makes it, from the tiny plans (or
    ``plans``) on :func:`stub_preprocessed` data under ``root``; not initialised."""
    import torch

    plans = tiny_plans() if plans is None else plans
    stub_preprocessed(root, monkeypatch, plans, configuration)
    return cls({**plans, "continue_training": continue_training}, configuration, 0, copy.deepcopy(dataset_json),
               device=torch.device("cpu"))

"""End-to-end runs of ``nnunet-tubeconv benchmark`` through nnU-Net's real entry points, on a tiny synthetic set.

Each unit is a real ``nnUNetv2_train`` (1-2 epochs of 2 iterations on 48 x 48 images, CPU) followed by nnU-Net's
validation and our evaluation, so these tests take minutes:

* a three-arm benchmark: vanilla, a cheap variant (a user's trainer from their own ``nnUNet_extTrainer`` folder)
  and a user's trainer that crashes: records, metrics, report, the failed unit recorded while the others finish;
  then ``--retry-failed`` through submitit's LocalExecutor (the cluster code path: the unit runs in a submitit job
  that writes the record);
* vanilla vs our scSE trainer with the runner killed by SIGKILL while the second unit trains, then restarted: no
  training outlives the runner, the finished record is byte-identical and not redone, the killed unit continues
  from its nnU-Net checkpoint (``--c``), all units end done, a third start has nothing to do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.nnunet import console_script, nnunet_env

DATASET_ID = 950
DATASET = "Dataset950_HarnessTubes"

USER_TRAINERS = '''
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerHarnessLowLR(nnUNetTrainer):
    """A cheap 'variant': vanilla with a lower learning rate."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 3e-3


class nnUNetTrainerHarnessBoom(nnUNetTrainer):
    def on_train_start(self):
        raise RuntimeError("boom: this test trainer fails on purpose")
'''

SUITE = """
name = "{name}"
datasets = [{dataset_id}]
configurations = ["2d"]
folds = [0]
seeds = [0]
num_splits = 3
budget = "tiny"
device = "cpu"
baseline = "vanilla"

[arms]
{arms}

[budgets.tiny]
num_epochs = {epochs}
num_iterations_per_epoch = 2
num_val_iterations_per_epoch = 1
save_every = 1

[planning]
num_processes = 1
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """nnU-Net folders with a tiny raw synthetic data set and a user's trainer folder (shared by the tests here)."""
    from nnunet_tubeconv.data.synthetic import write_synthetic_dataset

    base = tmp_path_factory.mktemp("harness")
    env = nnunet_env(base)
    raw = write_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, 2, 6, shape=(48, 48), seed=3, name="HarnessTubes")
    # a held-out test set (imagesTs/labelsTs): the harness predicts it with each arm's folds as an ensemble
    from nnunet_tubeconv.data.common import write_nifti
    from nnunet_tubeconv.data.synthetic import generate_case

    (raw / "imagesTs").mkdir(exist_ok=True)
    (raw / "labelsTs").mkdir(exist_ok=True)
    for i in (6, 7):
        case = generate_case(3, i, 2, (48, 48))
        write_nifti(raw / "imagesTs" / f"tubes_{i:03d}_0000.nii.gz", case.image, case.spacing)
        write_nifti(raw / "labelsTs" / f"tubes_{i:03d}.nii.gz", case.label, case.spacing)
    ext = base / "user_trainers"
    ext.mkdir()
    (ext / "harness_user_trainers.py").write_text(USER_TRAINERS)
    env["nnUNet_extTrainer"] = str(ext)
    return base, env


def _suite(path: Path, arms: dict[str, str], epochs: int, name: str = "harness-e2e") -> Path:
    """A suite file with ``arms`` (name: TRAINER or TRAINER@PLANS) and a budget of ``epochs`` epochs; the baseline
    pins one seed (by default it would run two for the noise floor): these tests are about the harness."""
    path.write_text(SUITE.format(name=name, dataset_id=DATASET_ID, epochs=epochs, arms="\n".join(
        f'"{k}" = {{ trainer = "{v}", seeds = [0] }}' if k == "vanilla" else f'"{k}" = "{v}"'
        for k, v in arms.items())))
    return path


def _runner(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([console_script("nnunet-tubeconv"), "benchmark", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def _record(results: Path, arm: str) -> Path:
    return results / "runs" / DATASET / "2d" / arm / "fold_0_seed_0" / "record.json"


def _processes_with_env(key: str, value: str) -> list[int]:
    """Pids of our processes whose environment has key=value (to find left-over nnU-Net trainings)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if f"{key}={value}".encode() in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:
            continue
    return out


def test_benchmark_end_to_end_records_metrics_report_failed_unit_and_submitit_retry(world, tmp_path):
    _, env = world
    env = {**env, "nnUNet_results": str(tmp_path / "nnunet_results")}
    suite = _suite(tmp_path / "suite.toml", {"vanilla": "nnUNetTrainer", "lowlr": "nnUNetTrainerHarnessLowLR",
                                             "boom": "nnUNetTrainerHarnessBoom"}, epochs=1)
    results = tmp_path / "results"
    t0 = time.perf_counter()
    r = _runner([suite, "-o", results], env)
    wall = time.perf_counter() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 1, out  # one unit failed on purpose
    assert "units: 3 (0 done, 0 failed, 3 to run)" in out
    assert "[1/3 vanilla f0 s0] train | epoch 1/1" in out and "FAILED" in out

    suite_json = json.loads((results / "suite.json").read_text())
    assert suite_json["datasets"] == [DATASET] and suite_json["baseline"] == "vanilla"
    assert suite_json["arms"]["lowlr"] == {"trainer": "nnUNetTrainerHarnessLowLR", "plans": "nnUNetPlans"}
    # held-out test set: every arm whose folds all finished predicted imagesTs (folds as an ensemble) and was scored
    for arm in ("vanilla", "lowlr"):
        test = json.loads((results / "runs" / DATASET / "2d" / arm / "test_seed_0" / "record.json").read_text())
        assert test["status"] == "done" and test["split"] == "test" and test["folds"] == [0], test.get("error")
        assert sorted({row["case"] for row in test["metrics"]["per_case"]}) == ["tubes_006", "tubes_007"]
        assert test["metrics"]["label_names"] == {"1": "vessel"}
    assert not (results / "runs" / DATASET / "2d" / "boom" / "test_seed_0").exists()  # its fold failed
    assert "## Held-out test set: Dataset950_HarnessTubes — 2d" in (results / "report.md").read_text()

    pre = Path(env["nnUNet_preprocessed"]) / DATASET
    splits = json.loads((pre / "splits_final.json").read_text())
    assert len(splits) == 3
    val = sorted(splits[0]["val"])

    import torch

    from nnunet_tubeconv.evaluation import evaluate_folders

    for arm, trainer in (("vanilla", "nnUNetTrainer"), ("lowlr", "nnUNetTrainerHarnessLowLR")):
        rec = json.loads(_record(results, arm).read_text())
        assert rec["schema"] == "nnunet-tubeconv/record/1" and rec["status"] == "done", rec.get("error")
        assert (rec["trainer"], rec["plans"], rec["fold"], rec["seed"], rec["budget"]) == (
            trainer, "nnUNetPlans", 0, 0, "tiny")
        assert rec["generated_trainer"] == f"{trainer}_tiny_s0"
        assert rec["versions"]["nnunetv2"] == "2.8.1" and rec["versions"]["torch"]
        assert "git_commit" in rec and rec["device"].startswith("cpu")
        assert rec["deterministic"] is False and "not bit-deterministic" in rec["seed_note"]
        assert 0 < rec["wall_time_s"] < wall
        assert rec["iteration_time_s"] > 0 and rec["peak_memory_bytes"] > 50 * 2 ** 20
        assert "ru_maxrss" in rec["peak_memory_source"]
        fold_dir = Path(rec["nnunet_output_folder"])
        assert fold_dir == (Path(env["nnUNet_results"]) / DATASET / f"{trainer}_tiny_s0__nnUNetPlans__2d" / "fold_0")
        ckpt = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        # state dicts list shared modules twice (decoder.encoder, all_modules): count each tensor once
        unique = {v.data_ptr(): v.numel() for v in ckpt["network_weights"].values()}
        assert rec["parameters"] == sum(unique.values()) > 10_000
        assert rec["curves"]["epoch"] == [0] and len(rec["curves"]["train_loss"]) == 1
        assert rec["curves"]["lr"][0] == pytest.approx(ckpt["logging"]["lrs"][0])
        assert rec["curves"]["pseudo_dice"][0] == pytest.approx(float(ckpt["logging"]["mean_fg_dice"][0]))
        m = rec["metrics"]
        assert m["schema"] == "nnunet-tubeconv/results/1" and m["labels"] == [1]
        assert sorted({row["case"] for row in m["per_case"]}) == val == rec["validation_cases"]
        # the metrics are those of nnU-Net's own out-of-fold predictions (fold_0/validation), not of a re-prediction
        refs = tmp_path / f"refs_{arm}"
        refs.mkdir()
        for case in val:
            shutil.copyfile(pre / "gt_segmentations" / f"{case}.nii.gz", refs / f"{case}.nii.gz")
        again = evaluate_folders(fold_dir / "validation", refs, labels=[1], progress=False)
        by_case = {row["case"]: row for row in again["per_case"]}
        for row in m["per_case"]:
            assert row["dice"] == pytest.approx(by_case[row["case"]]["dice"])
            assert row["cldice"] == pytest.approx(by_case[row["case"]]["cldice"])
        assert (Path(rec["log_file"]).read_text().count("Epoch 0")) == 1

    boom = json.loads(_record(results, "boom").read_text())
    assert boom["status"] == "failed" and boom["metrics"] is None
    assert "boom: this test trainer fails on purpose" in boom["error"]

    index = json.loads((results / "trainers" / "index.json").read_text())
    assert index["classes"]["nnUNetTrainerHarnessLowLR_tiny_s0"]["base"]["origin"] == "user"
    assert index["classes"]["nnUNetTrainer_tiny_s0"]["base"]["origin"] == "nnunetv2"

    md = (results / "report.md").read_text()
    assert (results / "report.html").is_file()
    assert "vanilla" in md and "lowlr" in md and "boom" in md
    assert f"report: {results / 'report.html'}" in out
    assert "Dice" in out and "lowlr" in out  # the comparison table

    # --retry-failed through submitit's LocalExecutor: only the failed unit runs again, in a submitit job that
    # writes its record; done records are untouched
    done_bytes = {a: _record(results, a).read_bytes() for a in ("vanilla", "lowlr")}
    r2 = _runner([suite, "-o", results, "--retry-failed", "--no-report", "--executor", "submitit-local"], env)
    out2 = r2.stdout + r2.stderr
    assert r2.returncode == 1, out2
    assert "units: 3 (2 done, 1 failed, retried, 1 to run)" in out2
    assert "[1/1 boom f0 s0] submitit-local | submitted job" in out2 and "ended: failed (1/1 jobs)" in out2
    assert "vanilla f0" not in out2
    job = json.loads((_record(results, "boom").parent / "submitit_job.json").read_text())
    assert list((results / "submitit").glob(f"{job['job_id']}/*_log.out"))  # the job's own log
    assert json.loads(_record(results, "boom").read_text())["finished"] > boom["finished"]
    assert {a: _record(results, a).read_bytes() for a in ("vanilla", "lowlr")} == done_bytes

    # the demo's figure from these results: image, reference, one panel per done arm
    from nnunet_tubeconv.benchmarks.demo import write_case_figure

    fig = write_case_figure(results, Path(env["nnUNet_raw"]) / DATASET, tmp_path / "case.png")
    assert fig is not None and fig.stat().st_size > 10_000


def _loadable(path: Path) -> bool:
    """True when ``path`` is a complete torch checkpoint (it may be half-written while training runs)."""
    if not path.is_file():
        return False
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):
        return False
    return True


def test_runner_killed_mid_unit_resumes_without_redoing_finished_units(world, tmp_path):
    _, env = world
    env = {**env, "nnUNet_results": str(tmp_path / "nnunet_results")}
    # the second arm is one of ours (nnunet_tubeconv.trainers, found through nnUNet_extTrainer by nnU-Net)
    suite = _suite(tmp_path / "suite.toml", {"vanilla": "nnUNetTrainer", "scse": "nnUNetTrainerScSE"}, epochs=3)
    results = tmp_path / "results"
    cmd = [console_script("nnunet-tubeconv"), "benchmark", str(suite), "-o", str(results), "--no-report"]
    first = _record(results, "vanilla")
    second_ckpt = (Path(env["nnUNet_results"]) / DATASET / "nnUNetTrainerScSE_tiny_s0__nnUNetPlans__2d"
                   / "fold_0" / "checkpoint_latest.pth")
    with open(tmp_path / "run1.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        # kill only once the second unit's checkpoint is complete: nnU-Net writes it in place (not atomically), and
        # a checkpoint torn by the kill is (rightly) moved aside, which would restart that unit instead of resuming
        while not (first.is_file() and _loadable(second_ckpt)):
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-4000:]
            assert time.time() < deadline, "the runner did not reach the second unit in time"
            time.sleep(0.2)
        assert not _record(results, "scse").exists()
        proc.send_signal(signal.SIGKILL)  # mid-way through the second unit's training
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the runner's nnUNetv2_train child must not outlive it (PR_SET_PDEATHSIG)
    deadline = time.time() + 30
    while _processes_with_env("nnUNet_results", env["nnUNet_results"]) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_with_env("nnUNet_results", env["nnUNet_results"]) == []
    assert not _record(results, "scse").exists()
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns

    r = _runner([suite, "-o", results, "--no-report"], env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "units: 2 (1 done, 0 failed, 1 to run)" in out
    assert "[1/1 scse f0 s0] resume | continuing from an nnU-Net checkpoint (--c)" in out
    assert "vanilla f0" not in out  # not redone
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime
    rec = json.loads(_record(results, "scse").read_text())
    assert rec["status"] == "done" and rec["resumed"] is True
    assert rec["telemetry"]["network_class"] == "nnunet_tubeconv.architectures.unet.TubeUNet"
    assert rec["block_options"]["scse_encoder_stages"]  # which blocks ran is on the record
    index = json.loads((results / "trainers" / "index.json").read_text())
    assert index["classes"]["nnUNetTrainerScSE_tiny_s0"]["base"]["origin"] == "nnunet_tubeconv"
    assert rec["curves"]["epoch"] == [0, 1, 2]  # the curves cover the epochs before the kill too
    assert rec["metrics"]["per_case"]

    r3 = _runner([suite, "-o", results, "--no-report"], env)
    assert r3.returncode == 0 and "units: 2 (2 done, 0 failed, 0 to run)" in r3.stdout, r3.stdout + r3.stderr
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime


def test_resenc_arms_plan_the_preset_once_train_on_it_and_keep_their_own_results(world, tmp_path):
    """Arms written TRAINER@nnUNetResEncUNetMPlans: the harness plans ResEnc M once with nnU-Net's own planner,
    both arms train on it (vanilla ResEnc M and our scSE inside it), results and labels are kept apart, and a
    second start has nothing to redo."""
    _, env = world
    env = {**env, "nnUNet_results": str(tmp_path / "nnunet_results")}
    plans_name = "nnUNetResEncUNetMPlans"
    arm = f"nnUNetTrainerScSE@{plans_name}"
    suite = _suite(tmp_path / "resenc.toml", {"vanilla": f"nnUNetTrainer@{plans_name}", arm: arm}, epochs=1,
                   name="harness-resenc")
    results = tmp_path / "results"
    r = _runner([suite, "-o", results], env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # planned once although two arms need it, by nnU-Net's own ResEnc M planner
    assert out.count(f"nnU-Net planning (nnUNetPlannerResEncM -> {plans_name}): done") == 1, out
    plans = json.loads((Path(env["nnUNet_preprocessed"]) / DATASET / f"{plans_name}.json").read_text())
    assert plans["configurations"]["2d"]["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert plans["configurations"]["2d"]["data_identifier"] == "nnUNetPlans_2d"  # the default plans' data

    for name, trainer, network in (("vanilla", "nnUNetTrainer", "ResidualEncoderUNet"),
                                   (arm, "nnUNetTrainerScSE", "TubeResEncUNet")):
        rec = json.loads(_record(results, name).read_text())
        assert rec["status"] == "done", rec.get("error")
        assert (rec["trainer"], rec["plans"]) == (trainer, plans_name)
        assert f"{trainer}_tiny_s0__{plans_name}__2d" in rec["nnunet_output_folder"]
        model_plans = json.loads((Path(rec["nnunet_output_folder"]).parent / "plans.json").read_text())
        assert model_plans["configurations"]["2d"]["architecture"]["network_class_name"].endswith(network)
        assert rec["metrics"]["per_case"]
    suite_json = json.loads((results / "suite.json").read_text())
    assert suite_json["arms"][arm] == {"trainer": "nnUNetTrainerScSE", "plans": plans_name}
    md = (results / "report.md").read_text()
    assert "vanilla [ResEnc M] (baseline)" in md and arm in md
    assert "ResEnc M" in out and "host" in out  # the comparison table's host column

    r2 = _runner([suite, "-o", results, "--no-report"], env)
    out2 = r2.stdout + r2.stderr
    assert r2.returncode == 0 and "units: 2 (2 done, 0 failed, 0 to run)" in out2, out2
    assert "nnU-Net planning" not in out2

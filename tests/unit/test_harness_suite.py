"""Fast tests of the benchmark harness: suites and their errors, generated arm trainers, records, progress parsing.

The end-to-end runs through nnU-Net's entry points are in test_harness_e2e.py (slow).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import pytest
from support import REPO_ROOT

from nnunet_tubeconv.benchmarks import arms as arms_mod
from nnunet_tubeconv.benchmarks.executors import EpochPrinter, parse_slurm_time
from nnunet_tubeconv.benchmarks.records import curves_from_logging, read_record
from nnunet_tubeconv.benchmarks.runner import comparison_table, resolve_dataset
from nnunet_tubeconv.benchmarks.suite import (
    BUDGETS,
    TOP_LEVEL_KEYS,
    SuiteError,
    Unit,
    expand_units,
    load_suite,
    parse_suite,
    read_suite_file,
)
from nnunet_tubeconv.cli import main
from nnunet_tubeconv.evaluation.serialise import atomic_write_text

SUITES = REPO_ROOT / "benchmarks" / "suites"
MINIMAL = {"datasets": [900], "configurations": ["2d"], "arms": ["nnUNetTrainer", "nnUNetTrainerDSConv"]}

USER_TRAINERS = '''
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerHarnessUserArm(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 3e-3
        self.num_epochs = 7  # the budget must win over what the arm sets
'''


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ suites
def test_example_suites_parse_and_demo_file_matches_embedded_demo():
    files = sorted(SUITES.glob("*.toml"))
    assert {f.stem for f in files} >= {"demo", "tubes2d_variants", "slurm_example"}
    for f in files:
        s = load_suite(f)
        own_budgets = read_suite_file(f).get("budgets", {})  # a suite may define its own [budgets.NAME]
        assert s.baseline in s.arms and (s.budget.name in BUDGETS or s.budget.name in own_budgets)
    from nnunet_tubeconv.benchmarks.demo import DEMO_SUITE

    embedded = parse_suite({**DEMO_SUITE, "datasets": [991]}).to_json()
    from_file = load_suite(SUITES / "demo.toml").to_json()
    for key in ("arms", "baseline", "configurations", "folds", "seeds", "budget", "budget_settings", "device",
                "num_splits"):
        assert embedded[key] == from_file[key], key
    assert load_suite(SUITES / "slurm_example.toml").executor.kind == "slurm"


def test_topology_suite_names_registered_trainers_and_two_baseline_seeds():
    from nnunet_tubeconv.trainers import TRAINER_MODULES

    s = load_suite(SUITES / "topology_losses.toml")
    assert set(s.arms) == {"vanilla", "wide", "dsconv", "skeleton_recall", "dsconv_skeleton_recall"}
    assert s.baseline == "vanilla" and s.arm_seeds("vanilla") == (0, 1) and s.arm_seeds("wide") == (0,)
    assert all(a.trainer in TRAINER_MODULES for n, a in s.arms.items() if n != "vanilla")
    assert len(s.datasets) == 1


def test_minimal_suite_defaults():
    s = parse_suite(MINIMAL)
    assert list(s.arms) == ["nnUNetTrainer", "nnUNetTrainerDSConv"]
    assert s.baseline == "nnUNetTrainer" and s.folds == (0,) and s.seeds == (0,)
    assert s.budget == BUDGETS["smoke"] and s.device == "auto" and s.executor.kind == "local"
    assert s.planners["nnUNetPlans"] == "ExperimentPlanner"
    # one seed: the baseline still runs two (the noise floor), the variant one
    assert s.arm_seeds("nnUNetTrainer") == (0, 1) and s.arm_seeds("nnUNetTrainerDSConv") == (0,)
    assert [(u.arm, u.seed) for u in expand_units(s, ["D"])] == [("nnUNetTrainer", 0), ("nnUNetTrainerDSConv", 0),
                                                                  ("nnUNetTrainer", 1)]
    assert s.to_json()["arms"]["nnUNetTrainer"]["seeds"] == [0, 1]
    # the suite's expected units (read back by the report) are the units the harness runs
    from nnunet_tubeconv.evaluation.layout import expected_units

    assert expected_units({**s.to_json(), "datasets": ["D"]}) == {
        (u.dataset, u.configuration, u.arm, str(u.fold), str(u.seed)) for u in expand_units(s, ["D"])}
    # a baseline that lists its own seeds keeps them; two suite seeds are two baseline seeds already
    own = parse_suite({**MINIMAL, "arms": {"b": {"trainer": "nnUNetTrainer", "seeds": [3]}, "v": "nnUNetTrainer"}})
    assert own.arm_seeds("b") == (3,)
    assert parse_suite({**MINIMAL, "seeds": [4, 7]}).arm_seeds("nnUNetTrainer") == (4, 7)


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"epochs": 3}, ["unknown top-level key(s) ['epochs']", "'budget'", "'folds'"]),
        ({"budget": "medium"}, ["unknown budget 'medium'", "'full'", "'short'", "'smoke'"]),
        ({"device": "tpu"}, ["device 'tpu'", "'cpu'", "'cuda'"]),
        ({"baseline": "nope"}, ["baseline 'nope' is not an arm"]),
        ({"arms": {"a": {"trainer": "nnUNetTrainer", "lr": 1}}}, ["unknown key(s) of arm 'a' ['lr']", "'plans'"]),
        ({"arms": {"bad name": "nnUNetTrainer"}}, ["arm name 'bad name'"]),
        ({"folds": [0, 5], "num_splits": 5}, ["folds [5] do not exist in a 5-fold split"]),
        ({"folds": [-1]}, ["folds must hold integers >= 0"]),
        ({"seeds": [0, 0]}, ["seeds lists a value twice"]),
        ({"budgets": {"tiny": {"num_epochs": 1}}, "budget": "tiny"}, ["[budgets.tiny]", "lacks"]),
        ({"budgets": {"smoke": {"num_epochs": 1, "num_iterations_per_epoch": 1,
                                "num_val_iterations_per_epoch": 1}}}, ["redefines a built-in budget"]),
        ({"executor": {"kind": "kubernetes"}}, ["executor kind 'kubernetes'", "'slurm'", "'local'"]),
        ({"executor": {"kind": "slurm", "gpus": 2}}, ["unknown key(s) of [executor] ['gpus']", "gpus_per_node"]),
        ({"planning": {"planer": "X"}}, ["unknown key(s) of [planning] ['planer']"]),
        ({"paths": {"raw": "/x"}}, ["unknown key(s) of [paths] ['raw']", "nnUNet_raw"]),
    ],
)
def test_bad_suites_say_what_is_wrong_and_what_is_allowed(change, fragments):
    with pytest.raises(SuiteError) as e:
        parse_suite({**MINIMAL, **change})
    msg = str(e.value)
    for f in fragments:
        assert f in msg, msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(SuiteError, match="in /data/my_suite.toml"):  # the file is named
        parse_suite({**MINIMAL, **change}, source="/data/my_suite.toml")


def test_missing_required_keys_list_all_keys():
    with pytest.raises(SuiteError) as e:
        parse_suite({"datasets": [1]})
    msg = str(e.value)
    assert "lacks ['configurations', 'arms']" in msg
    for k in TOP_LEVEL_KEYS:
        assert k in msg


def test_custom_budget_and_per_arm_seeds(tmp_path):
    f = _write(tmp_path / "s.toml", """
datasets = ["Dataset900_X"]
configurations = ["2d"]
seeds = [0, 1]
folds = [0, 1]
budget = "tiny"
[budgets.tiny]
num_epochs = 3
num_iterations_per_epoch = 4
num_val_iterations_per_epoch = 2
[arms]
base = "nnUNetTrainer"
var = { trainer = "nnUNetTrainerDSConv", seeds = [0] }
""")
    s = load_suite(f)
    assert (s.budget.num_epochs, s.budget.num_iterations_per_epoch, s.budget.num_val_iterations_per_epoch) == (3, 4, 2)
    units = expand_units(s, ["Dataset900_X"])
    assert len(units) == 2 * 2 + 2  # base: 2 folds x 2 seeds, var: 2 folds x 1 seed
    # arms of one (fold, seed) are adjacent, so a run cut short still leaves pairs
    assert [(u.arm, u.fold, u.seed) for u in units[:4]] == [("base", 0, 0), ("var", 0, 0), ("base", 1, 0),
                                                             ("var", 1, 0)]
    assert s.to_json()["arms"]["var"]["seeds"] == [0]
    assert units[0].rel_dir == Path("runs/Dataset900_X/2d/base/fold_0_seed_0")


def test_flags_override_the_suite_file(tmp_path):
    import argparse

    from nnunet_tubeconv.benchmarks.runner import add_arguments, suite_from_args

    f = _write(tmp_path / "s.toml", 'datasets = [1]\nconfigurations = ["2d"]\narms = ["nnUNetTrainer"]\n')
    p = argparse.ArgumentParser()
    add_arguments(p)
    s = suite_from_args(p.parse_args([str(f), "-f", "1", "2", "--budget", "short", "--executor", "slurm",
                                      "--slurm-partition", "gpu", "--slurm-gpus-per-node", "1",
                                      "--slurm-time", "1-02:00:00", "--arm", "snake=nnUNetTrainerDSConv@MyPlans"]))
    assert s.folds == (1, 2) and s.budget.name == "short"
    assert s.arms["snake"].trainer == "nnUNetTrainerDSConv" and s.arms["snake"].plans == "MyPlans"
    assert s.executor.kind == "slurm" and s.executor.slurm_partition == "gpu" and s.executor.gpus_per_node == 1
    assert s.executor.timeout_min == 26 * 60
    s2 = suite_from_args(p.parse_args(["-d", "7", "-c", "3d_fullres", "-tr", "nnUNetTrainer", "nnUNetTrainerScSE"]))
    assert s2.datasets == ("7",) and list(s2.arms) == ["nnUNetTrainer", "nnUNetTrainerScSE"]


def test_cli_reports_bad_suite_file_with_exit_code_2(tmp_path, capsys):
    f = _write(tmp_path / "bad.toml", 'datasets = [1]\nconfigurations = ["2d"]\narms = ["nnUNetTrainer"]\n'
                                      'budget = "forever"\n')
    assert main(["benchmark", str(f), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown budget 'forever'" in err and "'smoke'" in err
    _write(tmp_path / "broken.toml", "datasets = [1\n")
    assert main(["benchmark", str(tmp_path / "broken.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["benchmark", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_dataset_lists_available(tmp_path, monkeypatch):
    paths = {v: str(tmp_path / v) for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    (tmp_path / "nnUNet_raw" / "Dataset004_Hippo").mkdir(parents=True)
    (tmp_path / "nnUNet_preprocessed" / "Dataset900_SynthTubes2D").mkdir(parents=True)
    assert resolve_dataset("900", paths) == "Dataset900_SynthTubes2D"
    assert resolve_dataset("Dataset004_Hippo", paths) == "Dataset004_Hippo"
    with pytest.raises(SuiteError) as e:
        resolve_dataset("8", paths)
    assert "data set '8' not found" in str(e.value)
    assert "Dataset004_Hippo" in str(e.value) and "Dataset900_SynthTubes2D" in str(e.value)
    with pytest.raises(SuiteError, match="neither an integer id"):
        resolve_dataset("Hippo", paths)


def test_cli_missing_dataset_is_a_clear_error(tmp_path, monkeypatch, capsys):
    for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(v, str(tmp_path / v))
    (tmp_path / "nnUNet_raw").mkdir()
    assert main(["benchmark", "-d", "123", "-c", "2d", "-tr", "nnUNetTrainer", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "data set '123' not found" in err and "available: none" in err


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 2), ("02:00:00", 120), ("1-00", 1440),
                                           ("1-02:30", 1590), ("0:10:01", 11), (45, 45)])
def test_parse_slurm_time(text, minutes):
    assert parse_slurm_time(text) == minutes


@pytest.mark.parametrize("text", ["abc", "0", "1:2:3:4", "-5"])
def test_parse_slurm_time_rejects(text):
    with pytest.raises(ValueError):
        parse_slurm_time(text)


def test_demo_data_set_is_written_once(tmp_path):
    from nnunet_tubeconv.benchmarks.demo import _demo_dataset_matches, ensure_demo_dataset

    raw = tmp_path / "raw"
    assert not _demo_dataset_matches(raw, 991, 3, (32, 32), 0)
    name = ensure_demo_dataset(raw, 991, 3, (32, 32), 0)
    label = raw / name / "labelsTr" / "tubes_000.nii.gz"
    mtime = label.stat().st_mtime_ns
    assert _demo_dataset_matches(raw, 991, 3, (32, 32), 0)
    assert ensure_demo_dataset(raw, 991, 3, (32, 32), 0) == name and label.stat().st_mtime_ns == mtime
    assert not _demo_dataset_matches(raw, 991, 4, (32, 32), 0)  # other settings: written again
    ensure_demo_dataset(raw, 991, 4, (32, 32), 0)
    assert len(list((raw / name / "labelsTr").iterdir())) == 4
    # a data set made by an older generator (no version in its stamp: fragmented labels) is not reused
    dj = raw / name / "dataset.json"
    meta = json.loads(dj.read_text())
    meta["synthetic"].pop("version")
    dj.write_text(json.dumps(meta))
    assert not _demo_dataset_matches(raw, 991, 4, (32, 32), 0)


# ------------------------------------------------------------------------------------------------ records
def test_atomic_write_keeps_old_content_when_interrupted(tmp_path, monkeypatch):
    p = tmp_path / "record.json"
    atomic_write_text(p, '{"a": 1}')
    assert p.read_text() == '{"a": 1}'

    def boom(src, dst):
        raise KeyboardInterrupt  # a kill between write and rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(p, '{"a": 2, "long": "' + "x" * 10000 + '"}')
    assert p.read_text() == '{"a": 1}'
    assert sorted(x.name for x in tmp_path.iterdir()) == ["record.json"]  # no temp file left behind


def test_read_record_ignores_unfinished_or_foreign_files(tmp_path):
    assert read_record(tmp_path) is None
    (tmp_path / "record.json").write_text("{not json")
    assert read_record(tmp_path) is None
    (tmp_path / "record.json").write_text(json.dumps({"schema": "other", "status": "done"}))
    assert read_record(tmp_path) is None
    (tmp_path / "record.json").write_text(json.dumps({"schema": "nnunet-tubeconv/record/1", "status": "failed"}))
    assert read_record(tmp_path)["status"] == "failed"


def test_curves_from_nnunet_logging():
    import numpy as np

    logging = {
        "mean_fg_dice": [np.float64(0.2), np.float64(0.5)], "ema_fg_dice": [0.2, 0.23],
        "dice_per_class_or_region": [[0.2], [0.5]], "train_losses": [np.float32(0.5), np.float32(-0.1)],
        "val_losses": [0.4, float("nan")], "lrs": [0.01, 0.005],
        "epoch_start_timestamps": [100.0, 110.0], "epoch_end_timestamps": [108.0, 121.5],
    }
    c = curves_from_logging(logging)
    assert c["epoch"] == [0, 1]
    assert c["pseudo_dice"] == [0.2, 0.5] and c["lr"] == [0.01, 0.005]
    assert c["val_loss"] == [0.4, None]  # NaN is not JSON
    assert c["epoch_time_s"] == [8.0, 11.5]
    assert isinstance(c["train_loss"][0], float)
    json.dumps(c, allow_nan=False)
    assert curves_from_logging(None) is None


def test_records_of_another_trainer_under_the_same_arm_name_are_refused():
    from nnunet_tubeconv.benchmarks.runner import _check_records_match_suite

    s = parse_suite({**MINIMAL, "arms": {"vanilla": "nnUNetTrainer", "snake": "nnUNetTrainerDSConv"}})
    ok = {"trainer": "nnUNetTrainerDSConv", "plans": "nnUNetPlans", "budget": "smoke", "status": "done"}
    _check_records_match_suite(s, {Unit("D", "2d", "snake", 0, 0): ok, Unit("D", "2d", "vanilla", 0, 0): None})
    with pytest.raises(SuiteError, match="rename the arm or use another results folder"):
        _check_records_match_suite(s, {Unit("D", "2d", "snake", 0, 0): {**ok, "trainer": "nnUNetTrainerScSE"}})
    with pytest.raises(SuiteError, match="'short'"):
        _check_records_match_suite(s, {Unit("D", "2d", "snake", 0, 0): {**ok, "budget": "short"}})


def test_fold_folder_of_another_schedule_is_refused(tmp_path):
    from nnunet_tubeconv.benchmarks.executors import BUDGET_STAMP, _claim_fold_dir

    smoke = BUDGETS["smoke"].to_json()
    fold = tmp_path / "nnUNetTrainer_smoke_s0__nnUNetPlans__2d" / "fold_0"
    _claim_fold_dir(fold, smoke)
    assert json.loads((fold / BUDGET_STAMP).read_text())["num_epochs"] == smoke["num_epochs"]
    _claim_fold_dir(fold, smoke)  # same schedule: fine
    with pytest.raises(RuntimeError, match="holds a training with budget"):
        _claim_fold_dir(fold, {**smoke, "num_epochs": smoke["num_epochs"] + 1})


def test_epoch_printer_condenses_nnunet_output(capsys):
    p = EpochPrinter("[1/2 vanilla f0 s0]", num_epochs=10)
    for line in [
        "2026-11-23 19:17:07.137769: Epoch 3", "2026-11-23 19:17:07.137887: Current learning rate: 0.01",
        "2026-11-23 19:17:39.969540: train_loss 0.0222", "2026-11-23 19:17:39.975771: val_loss -0.2258",
        "2026-11-23 19:17:39.975856: Pseudo dice [np.float32(0.581), np.float32(0.25)]",
        "2026-11-23 19:17:39.975914: Epoch time: 32.83 s", "2026-11-23 19:18:29.000804: predicting tubes_000",
    ]:
        p.feed(line + "\n")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("[1/2 vanilla f0 s0] train | epoch 4/10 | train_loss 0.0222 val_loss -0.2258 "
                      "pseudo-dice 0.581/0.25 | 32.83 s")
    assert out[1] == "[1/2 vanilla f0 s0] validate | case tubes_000 (1)"


def test_comparison_table_means_over_cases():
    s = parse_suite({**MINIMAL, "arms": {"vanilla": "nnUNetTrainer", "snake": "nnUNetTrainerDSConv"}})

    def rec(dices, status="done"):
        return {"status": status, "iteration_time_s": 0.5, "peak_memory_bytes": 2 ** 30, "parameters": 2_000_000,
                "timing": {"training_time_s": 60.0},
                "metrics": {"per_case": [{"case": f"c{i}", "label": 1, "dice": d, "cldice": d, "hd95": 1.0,
                                          "nsd": d, "betti0_error": 1, "betti1_error": 0} for i, d in
                                         enumerate(dices)]}}

    records = {Unit("D", "2d", "vanilla", 0, 0): rec([0.5, 0.7]), Unit("D", "2d", "vanilla", 1, 0): rec([0.9]),
               Unit("D", "2d", "snake", 0, 0): rec([0.1]), Unit("D", "2d", "snake", 1, 0): None}
    table = comparison_table(s, ["D"], records).splitlines()
    vanilla = next(line for line in table if line.startswith("vanilla"))
    snake = next(line for line in table if line.startswith("snake"))
    assert "2/2" in vanilla and "0.700" in vanilla and "1.00 GiB" in vanilla and "2.00 M" in vanilla
    assert "1/2" in snake and "0.100" in snake
    assert table.index(vanilla) < table.index(snake)  # baseline first


# ------------------------------------------------------------------------------------------------ arm trainers
def test_find_trainer_in_nnunet_ours_and_user_folders(tmp_path):
    src = arms_mod.find_trainer("nnUNetTrainer", [])
    assert src.origin == "nnunetv2" and src.module == "nnunetv2.training.nnUNetTrainer.nnUNetTrainer"
    src = arms_mod.find_trainer("nnUNetTrainerNoMirroring", [])
    assert src.origin == "nnunetv2" and src.module.endswith("nnUNetTrainerNoMirroring")
    ours = arms_mod.find_trainer("nnUNetTrainerDSConv", [])
    assert ours.origin == "nnunet_tubeconv" and ours.module.startswith("nnunet_tubeconv.trainers.")
    user_dir = tmp_path / "ext"
    user_dir.mkdir()
    _write(user_dir / "my_harness_user_trainers.py", USER_TRAINERS)
    user = arms_mod.find_trainer("nnUNetTrainerHarnessUserArm", [str(user_dir)])
    assert user.origin == "user" and user.module == "my_harness_user_trainers" and user.folder == str(user_dir)
    assert user.file == str(user_dir / "my_harness_user_trainers.py")
    with pytest.raises(arms_mod.TrainerNotFoundError) as e:
        arms_mod.find_trainer("nnUNetTrainerDoesNotExist", [str(user_dir)])
    assert "nnUNet_extTrainer" in str(e.value) and str(user_dir) in str(e.value)


def test_generated_arm_trainers_load_through_nnunet_and_apply_budget_and_seed(tmp_path, monkeypatch):
    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from support.plans import TINY_DATASET_JSON, tiny_plans

    user_dir = tmp_path / "ext"
    user_dir.mkdir()
    _write(user_dir / "my_harness_user_trainers2.py", USER_TRAINERS)
    budget = parse_suite({**MINIMAL, "budget": "b", "budgets": {"b": {
        "num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1, "save_every": 1}}}).budget
    sources = {"nnUNetTrainer": arms_mod.find_trainer("nnUNetTrainer", []),
               "nnUNetTrainerHarnessUserArm": arms_mod.find_trainer("nnUNetTrainerHarnessUserArm", [str(user_dir)])}
    gen = tmp_path / "results" / "trainers"
    path = arms_mod.write_arm_trainers(gen, sources, {"nnUNetTrainer": [0, 3], "nnUNetTrainerHarnessUserArm": [5]},
                                       budget)
    mtime = path.stat().st_mtime_ns
    arms_mod.write_arm_trainers(gen, sources, {"nnUNetTrainer": [0, 3], "nnUNetTrainerHarnessUserArm": [5]}, budget)
    assert path.stat().st_mtime_ns == mtime  # unchanged content is not rewritten
    index = json.loads((gen / "index.json").read_text())
    assert index["classes"]["nnUNetTrainerHarnessUserArm_b_s5"]["base"]["origin"] == "user"

    monkeypatch.setenv("nnUNet_extTrainer", arms_mod.ext_trainer_value(gen, [str(user_dir)]))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nnunet_results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name, seed, base_lr in (("nnUNetTrainer_b_s3", 3, 1e-2), ("nnUNetTrainerHarnessUserArm_b_s5", 5, 3e-3)):
        cls = recursive_find_trainer_class_by_name(name)
        assert issubclass(cls, nnUNetTrainer) and cls.__name__ == name
        assert inspect.signature(cls.__init__).parameters.keys() == inspect.signature(
            nnUNetTrainer.__init__).parameters.keys()
        plans = tiny_plans()
        plans["continue_training"] = False
        torch.manual_seed(1234)
        np.random.seed(1234)
        t = cls(plans=plans, configuration="2d", fold=0, dataset_json=dict(TINY_DATASET_JSON),
                device=torch.device("cpu"))
        assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch, t.save_every) == (2, 3, 1, 1)
        assert t.initial_lr == base_lr  # everything but the budget is the arm's own
        assert torch.initial_seed() == seed and np.random.get_state()[1][0] == seed
        assert t.output_folder.endswith(f"{name}__nnUNetPlans__2d/fold_0")


def test_records_written_by_the_harness_and_the_test_helper_follow_the_one_schema(tmp_path):
    """The record schema is defined once (evaluation/layout.py); the harness's records and the fabricated ones the
    report's tests read both carry every key it lists."""
    from support.results import fabricate_results_dir

    from nnunet_tubeconv.benchmarks import records
    from nnunet_tubeconv.benchmarks.executors import UnitContext, _base_record
    from nnunet_tubeconv.benchmarks.suite import Unit
    from nnunet_tubeconv.evaluation import layout

    assert records.RECORD_SCHEMA is layout.RECORD_SCHEMA and records.RECORD_FILE is layout.RECORD_FILE
    ctx = UnitContext(unit=Unit("Dataset900_X", "2d", "base", 0, 0), results_dir=str(tmp_path), trainer="T",
                      generated_trainer="T_smoke_s0", plans="nnUNetPlans", budget={"name": "smoke"}, device="cpu",
                      npz=False, env={"nnUNet_results": str(tmp_path)})
    rec = _base_record(ctx, "2026-01-01T00:00:00+00:00")
    assert set(layout.RECORD_KEYS) <= set(rec) and rec["schema"] == layout.RECORD_SCHEMA
    root = fabricate_results_dir(tmp_path / "fab")
    for path in root.glob(layout.RECORD_GLOB):
        assert set(layout.RECORD_KEYS) <= set(json.loads(path.read_text()))
    assert ctx.unit_dir == tmp_path / layout.unit_rel_dir("Dataset900_X", "2d", "base", 0, 0)
    assert layout.parse_unit_dir("fold_all_seed_3") == ("all", 3) and layout.parse_unit_dir("test_seed_0") is None
    assert layout.parse_test_dir("test_seed_2") == 2

"""Arms on other hosts (``TRAINER@PLANS``, e.g. nnU-Net's ResEnc presets): parsing, planner choice, errors, labels.

Fast: no training. The end-to-end run with a ResEnc arm is in test_harness_e2e.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from nnunet_tubeconv.benchmarks.runner import add_arguments, comparison_table, planner_for, suite_from_args
from nnunet_tubeconv.benchmarks.suite import SuiteError, Unit, expand_units, load_suite, parse_suite
from nnunet_tubeconv.evaluation.layout import split_arm_spec
from nnunet_tubeconv.evaluation.report import _host_note, arm_labels
from nnunet_tubeconv.planning.hosts import (
    DEFAULT_PLANS,
    HOST_PRESETS,
    check_host,
    host_label,
    parse_preset_plans_name,
    preset_plans_name,
)

RESENC_M = "nnUNetResEncUNetMPlans"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def test_split_arm_spec():
    assert split_arm_spec("nnUNetTrainer") == ("nnUNetTrainer", None)
    assert split_arm_spec(f"nnUNetTrainerDSConv@{RESENC_M}") == ("nnUNetTrainerDSConv", RESENC_M)
    for bad in ("@P", "T@", "T@P@Q", ""):
        with pytest.raises(ValueError, match="TRAINER or TRAINER@PLANS"):
            split_arm_spec(bad)


def test_toml_list_of_trainer_at_plans_names_arms_by_what_is_written(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(f'datasets = [1]\nconfigurations = ["2d"]\n'
                 f'arms = ["nnUNetTrainer@{RESENC_M}", "nnUNetTrainerDSConv@{RESENC_M}", "nnUNetTrainer"]\n')
    s = load_suite(f)
    a = s.arms[f"nnUNetTrainerDSConv@{RESENC_M}"]
    assert (a.trainer, a.plans) == ("nnUNetTrainerDSConv", RESENC_M)
    assert s.arms["nnUNetTrainer"].plans == DEFAULT_PLANS
    assert s.arms[f"nnUNetTrainer@{RESENC_M}"].trainer == "nnUNetTrainer"
    # the same trainer on two plans: two arms, two folders of the results layout; the plans are planned once each
    assert s.plans_identifiers() == [DEFAULT_PLANS, RESENC_M]
    dirs = {u.rel_dir.parent for u in expand_units(s, ["Dataset001_X"])}
    assert Path(f"runs/Dataset001_X/2d/nnUNetTrainer@{RESENC_M}") in dirs
    assert Path("runs/Dataset001_X/2d/nnUNetTrainer") in dirs
    assert s.to_json()["arms"][f"nnUNetTrainerDSConv@{RESENC_M}"] == {"trainer": "nnUNetTrainerDSConv",
                                                                      "plans": RESENC_M}


def test_toml_table_values_and_tables_take_trainer_at_plans():
    s = parse_suite({"datasets": [1], "configurations": ["2d"],
                     "arms": {"vanilla": f"nnUNetTrainer@{RESENC_M}",
                              "snake": {"trainer": f"nnUNetTrainerDSConv@{RESENC_M}", "seeds": [3]},
                              "same": {"trainer": f"nnUNetTrainerScSE@{RESENC_M}", "plans": RESENC_M}}})
    assert {n: (a.trainer, a.plans) for n, a in s.arms.items()} == {
        "vanilla": ("nnUNetTrainer", RESENC_M), "snake": ("nnUNetTrainerDSConv", RESENC_M),
        "same": ("nnUNetTrainerScSE", RESENC_M)}
    assert s.arms["snake"].seeds == (3,)


@pytest.mark.parametrize("arms, fragment", [
    ({"a": {"trainer": f"nnUNetTrainer@{RESENC_M}", "plans": "nnUNetPlans"}}, "names plans twice"),
    ({"a": "nnUNetTrainer@"}, "TRAINER or TRAINER@PLANS"),
    ({"a": "nnUNetTrainer@A@B"}, "TRAINER or TRAINER@PLANS"),
    ({"a": "nnUNetTrainer@bad plans"}, "plans must be a plans identifier"),
    ({"a": "9Trainer@X"}, "trainer class name"),
    (["nnUNetTrainer@X", "nnUNetTrainer@X"], "lists an arm twice"),
    ({"a@b@c": "nnUNetTrainer"}, "arm name 'a@b@c'"),
])
def test_bad_trainer_at_plans_say_what_is_wrong(arms, fragment):
    with pytest.raises(SuiteError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_suite({"datasets": [1], "configurations": ["2d"], "arms": arms})


def test_flags_take_trainer_at_plans():
    s = suite_from_args(_parser().parse_args(["-d", "7", "-c", "2d", "-tr", f"nnUNetTrainer@{RESENC_M}",
                                              f"nnUNetTrainerDSConv@{RESENC_M}", "nnUNetTrainerScSE"]))
    assert [(n, a.trainer, a.plans) for n, a in s.arms.items()] == [
        (f"nnUNetTrainer@{RESENC_M}", "nnUNetTrainer", RESENC_M),
        (f"nnUNetTrainerDSConv@{RESENC_M}", "nnUNetTrainerDSConv", RESENC_M),
        ("nnUNetTrainerScSE", "nnUNetTrainerScSE", DEFAULT_PLANS)]
    # -p applies to the arms that do not name their plans
    s = suite_from_args(_parser().parse_args(["-d", "7", "-c", "2d", "-tr", "nnUNetTrainer",
                                              "nnUNetTrainerDSConv@nnUNetPlans", "-p", RESENC_M]))
    assert [a.plans for a in s.arms.values()] == [RESENC_M, DEFAULT_PLANS]
    with pytest.raises(SystemExit):
        _parser().parse_args(["--arm", "x=nnUNetTrainer@"])


def test_planner_for_nnunet_presets_ours_and_unknown_names():
    s = parse_suite({"datasets": [1], "configurations": ["2d"], "arms": ["nnUNetTrainer"]})
    assert planner_for(RESENC_M, s) == ("nnUNetPlannerResEncM", None)
    assert planner_for("nnUNetResEncUNetXLPlans", s) == ("nnUNetPlannerResEncXL", None)
    assert planner_for(DEFAULT_PLANS, s) == ("ExperimentPlanner", None)
    # our memory-aware presets are planned by our classes at the target their name says
    path, gb = planner_for("nnUNetResEncUNetLPlans_dsconv_24G", s)
    assert (path, gb) == ("nnunet_tubeconv.planning.planners.nnUNetPlannerResEncL_dsconv", 24.0)
    assert planner_for("nnUNetPlans_scse_12.5G", s) == ("nnunet_tubeconv.planning.planners.nnUNetPlannerScSE", 12.5)
    with pytest.raises(SuiteError, match=r"did you mean \['nnUNetResEncUNetMPlans'\]") as e:
        planner_for("nnUNetResEncUNetMplans", s, "Dataset001_X", Path("/p/nnUNetResEncUNetMplans.json"))
    assert "Known plans names" in str(e.value) and "nnUNetResEncUNetLPlans_dsconv_24G" in str(e.value)
    with pytest.raises(SuiteError, match="variant 'snek', which does not exist"):
        planner_for("nnUNetResEncUNetMPlans_snek_8G", s)
    custom = parse_suite({"datasets": [1], "configurations": ["2d"], "arms": ["nnUNetTrainer@MyPlans"],
                          "planning": {"planners": {"MyPlans": "my.module.MyPlanner"}}})
    assert planner_for("MyPlans", custom) == ("my.module.MyPlanner", None)


def test_host_presets_and_plans_names():
    assert list(HOST_PRESETS) == ["plain", "resenc-m", "resenc-l", "resenc-xl"]
    assert [h.gpu_memory_gb for h in HOST_PRESETS.values()] == [8, 8, 24, 40]  # nnU-Net's planners' targets
    assert preset_plans_name("resenc-l", "dsconv", 24) == "nnUNetResEncUNetLPlans_dsconv_24G"
    h, v, gb = parse_preset_plans_name("nnUNetResEncUNetXLPlans_tubeconv_40G")
    assert (h.name, v, gb) == ("resenc-xl", "tubeconv", 40.0)
    assert parse_preset_plans_name("nnUNetResEncUNetMPlans") is None
    assert parse_preset_plans_name("OtherPlans_dsconv_8G") is None
    assert host_label(RESENC_M) == "ResEnc M" and host_label("nnUNetPlans_dsconv_8G") == "plain U-Net"
    assert host_label("MyPlans") == "MyPlans"
    with pytest.raises(ValueError, match=r"unknown host/preset 'resenc-s'; allowed: \['plain', 'resenc-m'"):
        check_host("resenc-s")


def test_report_and_table_labels_show_the_host():
    suite = parse_suite({"datasets": [1], "configurations": ["2d"], "baseline": "vanilla",
                         "arms": {"vanilla": "nnUNetTrainer", "snake": f"nnUNetTrainerDSConv@{RESENC_M}",
                                  f"nnUNetTrainer@{RESENC_M}": f"nnUNetTrainer@{RESENC_M}"}})
    labels = arm_labels(suite.to_json())
    assert labels == {"vanilla": "vanilla", "snake": "snake [ResEnc M]",
                      f"nnUNetTrainer@{RESENC_M}": f"nnUNetTrainer@{RESENC_M}"}
    note = _host_note(suite.to_json(), "vanilla")
    assert "snake" in note and "network and the host together" in note
    assert _host_note(suite.to_json(), "snake").count("vanilla") == 1
    records = {Unit("D", "2d", a, 0, 0): None for a in suite.arms}
    table = comparison_table(suite, ["D"], records)
    header = table.splitlines()[1].split()
    assert header[:4] == ["arm", "trainer", "host", "units"]
    assert any(line.split()[:2] == ["snake", "nnUNetTrainerDSConv"] and "ResEnc" in line for line in table.splitlines())
    # on the default plans only: no host column (the demo's table stays as it was)
    plain = parse_suite({"datasets": [1], "configurations": ["2d"], "arms": ["nnUNetTrainer", "nnUNetTrainerDSConv"]})
    assert "host" not in comparison_table(plain, ["D"], {Unit("D", "2d", a, 0, 0): None for a in plain.arms})


def test_torn_plans_file_is_planned_again(tmp_path, monkeypatch):
    """A planning killed while nnU-Net wrote the plans leaves a torn file: the next start plans again."""
    from nnunet_tubeconv.benchmarks import runner

    pre = tmp_path / "pre" / "Dataset001_X"
    pre.mkdir(parents=True)
    (pre / f"{RESENC_M}.json").write_text('{"configurations": {"2d": ')
    calls = []

    def fake_run(cmd, env, log, what):
        calls.append(what)
        if "planning" in what:
            (pre / f"{RESENC_M}.json").write_text(json.dumps({"configurations": {"2d": {"data_identifier": "d"}}}))
        raise SystemExit  # stop before preprocessing

    monkeypatch.setattr(runner, "_run_logged", fake_run)
    (pre / "dataset_fingerprint.json").write_text("{}")
    (tmp_path / "raw" / "Dataset001_X").mkdir(parents=True)
    s = parse_suite({"datasets": [1], "configurations": ["2d"], "arms": [f"nnUNetTrainer@{RESENC_M}"]})
    with pytest.raises(SystemExit):
        runner.prepare_dataset("Dataset001_X", s, {"nnUNet_preprocessed": str(tmp_path / "pre"),
                                                   "nnUNet_raw": str(tmp_path / "raw")}, {}, tmp_path / "logs")
    assert calls == [f"Dataset001_X: nnU-Net planning (nnUNetPlannerResEncM -> {RESENC_M})"]

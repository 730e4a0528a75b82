"""The harness's second looks at finished work: re-evaluating kept validation predictions (training facts kept),
the rows of other human annotators, the ETA from measured unit times, and the evaluation settings checked when a
suite is read (a typo fails before hours of training). Fake nnU-Net folders written here; no training."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from support.results import write_segmentation

from nnunet_tubeconv.benchmarks.executors import reevaluate_unit
from nnunet_tubeconv.benchmarks.runner import comparison_table, eta_line, evaluate_annotators, unit_contexts
from nnunet_tubeconv.benchmarks.suite import SuiteError, Unit, parse_suite

DS = "Dataset950_Fake"
CASES = [f"case{i}" for i in range(4)]


def _suite(**extra) -> dict:
    return {"name": "t", "datasets": [DS], "configurations": ["2d"], "folds": [0, 1],
            "arms": {"vanilla": "nnUNetTrainer", "snake": "nnUNetTrainerDSConv"}, "budget": "smoke", **extra}


def _reference(i: int) -> np.ndarray:
    seg = np.zeros((24, 24), np.uint8)
    seg[4 + i, 2:22] = 1          # a thin vessel (radius 1)
    seg[12:17, 2:22] = 1          # a thicker one (centre radius 3)
    return seg


def _fake_nnunet(root: Path) -> dict[str, str]:
    """nnU-Net's three folders for one 2D data set of 4 cases, two folds of 2 validation cases; the raw data set
    has a second annotator who misses the thin vessel."""
    env = {k: str(root / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    pre = root / "nnUNet_preprocessed" / DS
    pre.mkdir(parents=True)
    (pre / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "vessel": 1},
                                                  "file_ending": ".nii.gz", "channel_names": {"0": "x"}}))
    (pre / "splits_final.json").write_text(json.dumps([{"train": CASES[2:], "val": CASES[:2]},
                                                       {"train": CASES[:2], "val": CASES[2:]}]))
    for i, c in enumerate(CASES):
        write_segmentation(pre / "gt_segmentations", c, _reference(i), (1.0, 1.0))
        other = _reference(i)
        other[4 + i] = 0
        write_segmentation(root / "nnUNet_raw" / DS / "labelsTr_observer2", c, other, (1.0, 1.0))
    return env


def test_annotator_rows_score_the_second_human_once_and_show_in_the_table(tmp_path):
    env = _fake_nnunet(tmp_path)
    suite = parse_suite(_suite(annotators={"second_human": "labelsTr_observer2"}))
    results = tmp_path / "bench"
    out = evaluate_annotators(suite, [DS], results, env)
    res = out[DS, "second_human"]
    assert sorted(r["case"] for r in res["per_case"]) == CASES  # the validation cases of folds 0 and 1
    assert all(r["recall_thin"] == pytest.approx(0.0, abs=0.1) and r["recall_thick"] == 1.0 for r in res["per_case"])
    path = results / "annotators" / DS / "second_human.json"
    assert json.loads(path.read_text())["per_case"][0]["case"] == "case0"
    path.write_text(json.dumps({"per_case": [{"case": "x", "dice": 0.5}]}))  # cached: read, not recomputed
    assert evaluate_annotators(suite, [DS], results, env)[DS, "second_human"]["per_case"][0]["dice"] == 0.5
    again = evaluate_annotators(suite, [DS], results, env, again=True)[DS, "second_human"]
    assert len(again["per_case"]) == 4
    table = comparison_table(suite, [DS], {}, {(DS, "second_human"): again})
    row = next(line for line in table.splitlines() if line.startswith("second_human"))
    dice = np.mean([r["dice"] for r in again["per_case"]])
    assert "annotator labelsTr_observer2" in row and f"{dice:.3f}" in row


def test_a_missing_annotator_folder_is_a_clear_error(tmp_path):
    env = _fake_nnunet(tmp_path)
    suite = parse_suite(_suite(annotators={"second_human": "labelsTr_observer3"}))
    with pytest.raises(SuiteError, match="labelsTr_observer3 does not exist"):
        evaluate_annotators(suite, [DS], tmp_path / "bench", env)


@pytest.mark.parametrize("annotators, message", [
    ({"second_human": "labelsTr"}, "other than labelsTr"),
    ({"vanilla": "labelsTr_observer2"}, "not an arm's"),
    ({"second human": "labelsTr_observer2"}, "must be a name"),
    ("labelsTr_observer2", "must be a table"),
])
def test_bad_annotators_are_refused(annotators, message):
    with pytest.raises(SuiteError, match=message):
        parse_suite(_suite(annotators=annotators))


@pytest.mark.parametrize("evaluation, message", [
    ({"nsd_tolerance": 1.0}, "unknown key"),
    ({"calibre_edges": [3.0, 1.0]}, "calibre_edges"),
    ({"connectivity": "diagonal"}, "connectivity"),
])
def test_evaluation_settings_are_checked_when_the_suite_is_read(evaluation, message):
    with pytest.raises(SuiteError, match=message):
        parse_suite(_suite(evaluation=evaluation))
    assert parse_suite(_suite(evaluation={"calibre_edges": [3.0, 6.0]})).evaluation["calibre_edges"] == [3.0, 6.0]


def _done(arm: str, wall: float) -> dict:
    return {"status": "done", "arm": arm, "wall_time_s": wall}


def test_eta_from_measured_unit_times():
    units = [Unit(DS, "2d", arm, f, 0) for arm in ("vanilla", "snake") for f in range(3)]
    assert "no unit has finished yet" in eta_line(units, {u: None for u in units})
    states = {u: None for u in units}
    states[units[0]] = _done("vanilla", 600.0)
    states[units[1]] = _done("vanilla", 1200.0)   # vanilla median 900 s
    states[units[3]] = _done("snake", 1800.0)     # snake median 1800 s
    todo = [units[2], units[4], units[5]]         # one vanilla, two snake units: 900 + 2 x 1800 = 4500 s
    line = eta_line(todo, states)
    assert "3 units, about 1.2 h" in line and "overall 20.0 min" in line and "counted at" not in line
    line = eta_line([Unit(DS, "2d", "wide", 0, 0)], states)  # no finished wide unit: the overall median, 20 min
    assert "about 0.3 h" in line and "(wide) counted at the overall median" in line


def _fold_dir(env: dict, suite, fold: int) -> Path:
    ctx = unit_contexts(suite, [Unit(DS, "2d", "vanilla", fold, 0)], Path("unused"), env)[0]
    return ctx.nnunet_fold_dir


def test_reevaluation_replaces_metrics_and_keeps_training_facts(tmp_path):
    env = _fake_nnunet(tmp_path)
    suite = parse_suite(_suite(evaluation={"calibre_edges": [1.5, 3.0]}))
    unit = Unit(DS, "2d", "vanilla", 0, 0)
    ctx = unit_contexts(suite, [unit], tmp_path / "bench", env)[0]
    old = {"status": "done", "arm": "vanilla", "iteration_time_s": 0.123, "curves": {"train_loss": [1.0, 0.5]},
           "metrics": {"per_case": [{"case": "case0", "dice": 0.1}]}, "validation_cases": ["case0"]}
    with pytest.raises(RuntimeError, match="validation predictions .* are gone"):
        reevaluate_unit(ctx, old)
    for i in (0, 1):  # the fold's validation predictions: case0 exact, case1 without its thin vessel
        pred = _reference(i)
        if i == 1:
            pred[4 + i] = 0
        write_segmentation(ctx.nnunet_fold_dir / "validation", CASES[i], pred, (1.0, 1.0))
    new = reevaluate_unit(ctx, old)
    on_disk = json.loads((ctx.unit_dir / "record.json").read_text())
    assert on_disk["iteration_time_s"] == 0.123 and on_disk["curves"] == {"train_loss": [1.0, 0.5]}
    rows = {r["case"]: r for r in on_disk["metrics"]["per_case"]}
    assert rows["case0"]["dice"] == 1.0 and rows["case0"]["recall_thin"] == 1.0
    assert rows["case1"]["recall_thin"] == pytest.approx(0.0, abs=0.1) and rows["case1"]["recall_thick"] == 1.0
    assert on_disk["validation_cases"] == ["case0", "case1"] == new["validation_cases"]
    assert "at" in on_disk["reevaluated"] and math.isclose(new["iteration_time_s"], 0.123)


def _speckled(i: int) -> np.ndarray:
    """The reference with three one-pixel false islands: postprocessing at 5 voxel-equivalents removes them."""
    seg = _reference(i)
    for y, x in ((1, 1), (20, 3), (22, 21)):
        seg[y, x] = 1
    return seg


def _trained(env: dict, suite, records: dict, arm: str, seed: int) -> None:
    """A finished unit on folds 0 and 1 of ``arm`` as the harness leaves it: nnU-Net's model folder (plans.json,
    dataset.json, fold_F/validation with speckled predictions) and a done record with the per-case metrics."""
    from support.plans import TINY_DATASET_JSON, tiny_plans

    from nnunet_tubeconv.evaluation.metrics import evaluate_masks

    for fold in (0, 1):
        unit = Unit(DS, "2d", arm, fold, seed)
        ctx = unit_contexts(suite, [unit], Path("unused"), env)[0]
        model = ctx.nnunet_fold_dir.parent
        plans = {**tiny_plans(), "dataset_name": DS, "original_median_spacing_after_transp": [999.0, 1.0, 1.0]}
        (model / "plans.json").parent.mkdir(parents=True, exist_ok=True)
        (model / "plans.json").write_text(json.dumps(plans))
        (model / "dataset.json").write_text(json.dumps({**TINY_DATASET_JSON, "numTraining": 4}))
        rows = []
        for i in (2 * fold, 2 * fold + 1):
            write_segmentation(ctx.nnunet_fold_dir / "validation", CASES[i], _speckled(i), (1.0, 1.0))
            m = evaluate_masks(_reference(i) > 0, _speckled(i) > 0, (1.0, 1.0))
            rows.append({"case": CASES[i], "label": 1, **m})
        records[unit] = {"status": "done", "arm": arm, "metrics": {"per_case": rows}}


def test_postprocessing_is_chosen_per_arm_on_its_folds_and_scored_beside_the_raw_row(tmp_path):
    from nnunet_tubeconv.benchmarks.runner import baseline_noise_floors, postprocess_arms

    env = _fake_nnunet(tmp_path)
    suite = parse_suite(_suite(postprocessing=True))
    records: dict = {}
    for arm, seed in (("vanilla", 0), ("vanilla", 1), ("snake", 0)):
        _trained(env, suite, records, arm, seed)
    units = sorted(records, key=lambda u: (u.arm, u.seed, u.fold))
    assert baseline_noise_floors(suite, units, records, DS, "2d") == {"dice": 0.0, "cldice": 0.0}
    waiting = Unit(DS, "2d", "snake", 1, 0)
    partial = {u: (None if u == waiting else r) for u, r in records.items()}
    assert ("snake" not in {k[2] for k in postprocess_arms(suite, units, partial, tmp_path / "bench", env)})
    out = postprocess_arms(suite, units, records, tmp_path / "bench", env)
    scores = out[DS, "2d", "snake", 0]
    assert sorted(r["case"] for r in scores["per_case"]) == CASES
    raw_b0 = np.mean([r["betti0_error"] for u, r in records.items() if u.arm == "snake"
                      for r in r["metrics"]["per_case"]])
    assert raw_b0 == 3 and all(r["betti0_error"] == 0 and r["dice"] == 1.0 for r in scores["per_case"])
    folder = tmp_path / "bench" / "postprocessing" / DS / "2d" / "snake" / "seed_0"
    assert (folder / "postprocessing.pkl").is_file() and (folder / "scores.json").is_file()
    table = comparison_table(suite, [DS], records, None, out)
    row = next(line for line in table.splitlines() if line.startswith("snake +pp"))
    assert "postprocessed" in row and "1.000" in row

"""``benchmarks/studies/real_data/snakes``: which arms have snakes, snake-stats measured once per record into the
store, and the page's "Do the snakes follow the vessels?" table from fabricated stored results whose numbers are
known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.results import fabricate_results_dir

from nnunet_tubeconv.architectures import VARIANTS, places_snakes
from nnunet_tubeconv.benchmarks.studies.real_data import page
from nnunet_tubeconv.benchmarks.studies.real_data.sections import Settings
from nnunet_tubeconv.benchmarks.studies.real_data.snakes import (
    collect_snake_stats,
    stats_path,
    unit_has_snakes,
)
from nnunet_tubeconv.benchmarks.studies.real_data.store import collect

DATASET = "Dataset902_DRIVE"
PAGE = "# Results\n\n## Protocol (written before the first run)\n\nThe rules.\n\n## Status\n\nRuns.\n"
LAYER = "decoder.stages.2.convs.1.conv"


@pytest.fixture
def results(tmp_path) -> Path:
    """vanilla (seeds 0, 1) and dsconv (nnUNetTrainerDSConv), two folds of 8 cases; Wide in the suite, not run."""
    root = fabricate_results_dir(tmp_path / "work" / "real_test", datasets=(DATASET,), configuration="2d",
                                 baseline="vanilla", variant="dsconv", variant_seeds=(0,), failed=[],
                                 folds=(0, 1), cases_per_fold=8)
    suite = json.loads((root / "suite.json").read_text())
    suite.update(name="real-test", seeds=[0])
    suite["arms"]["vanilla"]["seeds"] = [0, 1]
    suite["arms"]["wide"] = {"trainer": "nnUNetTrainerWide", "plans": "nnUNetPlans"}
    (root / "suite.json").write_text(json.dumps(suite))
    return root


def _stats(fold: int, cases: list[str], snake: float = 0.6, straight: float = 0.5) -> dict:
    per_case = {c: {"positions": 100, "saturated": 0.2, "mean_step": 0.3, "tilt": 0.4, "constant_tilt": 0.3,
                    "vessel_positions": 10, "adherence_snake": snake, "adherence_straight": straight}
                for c in cases}
    return {"record_sha256": "x", "dataset": DATASET, "configuration": "2d", "arm": "dsconv", "fold": fold,
            "seed": 0, "trainer": "nnUNetTrainerDSConv", "cases": cases, "labels": True,
            "layers": [{"name": LAYER, "block": "decoder", "stage": 2, "morph_axis": 0, "swing_axes": [1],
                        "per_case": per_case, "summary": {}}]}


def _cases(results: Path, arm: str, fold: int) -> list[str]:
    rec = json.loads((results / "runs" / DATASET / "2d" / arm / f"fold_{fold}_seed_0" / "record.json").read_text())
    return sorted({str(r["case"]) for r in rec["metrics"]["per_case"]})


def _render(tmp_path: Path, store: Path) -> str:
    p = tmp_path / "docs" / "results.md"
    p.parent.mkdir(exist_ok=True)
    p.write_text(PAGE)
    page.render(store.parent, p, tmp_path / "docs" / "images", suites=(), settings=Settings(n_resamples=2000))
    text = p.read_text()
    i = text.index("### Do the snakes follow the vessels?")
    return text[i:text.index("### Figures", i)]


def _row(section: str, arm: str) -> list[str]:
    row = next(line for line in section.splitlines() if line.startswith(f"| {arm} "))
    return [c.strip() for c in row.strip("|").split("|")]


# ------------------------------------------------------------------------------------------ which arms
def test_places_snakes_is_read_from_the_block_options():
    assert places_snakes(VARIANTS["dsconv"]["options"]) and places_snakes(VARIANTS["tubeconv"]["options"])
    assert not places_snakes(VARIANTS["deform"]["options"]) and not places_snakes(VARIANTS["scse"]["options"])
    assert not places_snakes(None) and not places_snakes({})
    assert not places_snakes({"conv_block": "dsc", "conv_block_encoder_stages": [], "conv_block_decoder_stages": []})
    assert not places_snakes({"conv_block": "dsc", "conv_block_encoder_stages": "none"})


@pytest.mark.parametrize(("trainer", "expected"), [
    ("nnUNetTrainerDSConv", True), ("nnUNetTrainerDSConvSkeletonRecall", True), ("nnUNetTrainerTubeConv", True),
    ("nnUNetTrainer", False), ("nnUNetTrainerSkeletonRecall", False), ("nnUNetTrainerWide", False),
    ("nnUNetTrainerDeformConv", False), ("nnUNetTrainerScSE", False), ("SomeoneElsesTrainer", False)])
def test_a_record_without_block_options_is_judged_by_its_trainer(trainer, expected):
    assert unit_has_snakes({"trainer": trainer, "block_options": None}) is expected


def test_the_records_block_options_win_over_the_trainer():
    dsc = {"conv_block": "dsc", "conv_block_encoder_stages": [2], "conv_block_decoder_stages": [2]}
    assert unit_has_snakes({"trainer": "MyTrainer", "block_options": None, "telemetry": {"block_options": dsc}})
    assert unit_has_snakes({"trainer": "nnUNetTrainer", "block_options": dsc})
    assert not unit_has_snakes({"trainer": "nnUNetTrainerDSConv", "block_options": {**dsc, "conv_block": "deform"}})


# ----------------------------------------------------------------------------------------------- collect
def test_collect_measures_each_snake_unit_once_per_record(results, tmp_path):
    store = collect(results, tmp_path / "store").folder
    calls = []

    def fake(record, raw, trainers):
        calls.append((record["arm"], record["fold"]))
        assert raw == tmp_path / "raw" and trainers == results / "trainers"
        return {k: v for k, v in _stats(record["fold"], record["validation_cases"] if record.get(
            "validation_cases") else ["c"]).items() if k not in ("record_sha256", "fold", "seed", "arm")}

    lines = collect_snake_stats(results, store, tmp_path / "raw", measure=fake)
    assert sorted(calls) == [("dsconv", 0), ("dsconv", 1)]               # vanilla has no snakes
    out = stats_path(store, DATASET, "2d", "dsconv", 0, 0)
    assert out.is_file() and json.loads(out.read_text())["fold"] == 0 and len(lines) == 2
    calls.clear()
    again = collect_snake_stats(results, store, tmp_path / "raw", measure=fake)
    assert calls == [] and all("record unchanged" in line for line in again)
    rec_path = results / "runs" / DATASET / "2d" / "dsconv" / "fold_1_seed_0" / "record.json"
    rec = json.loads(rec_path.read_text())
    rec_path.write_text(json.dumps({**rec, "reevaluated": {"at": "later"}}))
    collect_snake_stats(results, store, tmp_path / "raw", measure=fake)
    assert calls == [("dsconv", 1)]                                        # only the changed record

    def broken(record, raw, trainers):
        raise RuntimeError("no checkpoint\nmore")

    rec_path.write_text(json.dumps(rec))
    lines = collect_snake_stats(results, store, tmp_path / "raw", measure=broken)
    assert any("not measured (RuntimeError: no checkpoint)" in line for line in lines)


def test_collect_without_a_model_says_so_and_goes_on(results, tmp_path):
    store = collect(results, tmp_path / "store").folder
    lines = collect_snake_stats(results, store, tmp_path / "raw")
    assert len(lines) == 2 and all("not measured" in line for line in lines)
    assert not (store / "snake_stats").exists()


# ------------------------------------------------------------------------------------------------ render
def test_render_shows_the_stored_snake_stats_pooled_over_folds(results, tmp_path):
    store = collect(results, tmp_path / "store").folder
    for fold in (0, 1):
        out = stats_path(store, DATASET, "2d", "dsconv", fold, 0)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_stats(fold, _cases(results, "dsconv", fold))))
    section = _render(tmp_path, store)
    row = _row(section, "dsconv")
    assert row == ["dsconv", f"`{LAYER}` (stage 2, axis 0)", "16 (0, 1)", "+10.0% [+10.0, +10.0]", "60.0% / 50.0%",
                   "20.0%", "30.0%", "follows the vessels more than a straight kernel"]
    assert "| vanilla " not in section and "| wide " not in section         # arms without snakes: no row
    assert "above 0 the snakes bend onto the vessels" in section


def test_an_arm_with_snakes_but_no_stored_result_is_not_measured_yet(results, tmp_path):
    store = collect(results, tmp_path / "store").folder
    section = _render(tmp_path, store)
    assert _row(section, "dsconv")[1] == "not measured yet"
    assert "| vanilla " not in section


def test_a_snake_arm_not_run_is_listed_and_an_undecided_one_says_so(results, tmp_path):
    suite = json.loads((results / "suite.json").read_text())
    suite["arms"]["tubeconv"] = {"trainer": "nnUNetTrainerTubeConv", "plans": "nnUNetPlans"}
    (results / "suite.json").write_text(json.dumps(suite))
    store = collect(results, tmp_path / "store").folder
    cases = _cases(results, "dsconv", 0)
    stats = _stats(0, cases)
    for i, c in enumerate(cases):                                          # differences +0.1 / -0.1: CI spans 0
        stats["layers"][0]["per_case"][c]["adherence_snake"] = 0.6 if i % 2 else 0.4
    out = stats_path(store, DATASET, "2d", "dsconv", 0, 0)
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(stats))
    section = _render(tmp_path, store)
    assert _row(section, "tubeconv")[1] == "not run"
    dsconv = _row(section, "dsconv")
    assert dsconv[2] == "8 (0)" and dsconv[3].startswith("+0.0% [")
    assert dsconv[-1] == "no evidence it follows the vessels better than a straight kernel"


def test_the_reading_says_when_there_are_too_few_cases():
    from nnunet_tubeconv.benchmarks.studies.real_data.snakes import reading

    s = {"cases": 4, "adherence_diff": 0.03, "adherence_diff_ci": [0.02, 0.04]}
    assert reading(s, 6) == ("follows the vessels more than a straight kernel (only 4 cases, fewer than the 6 of a "
                             "test: a first look)")
    assert reading({**s, "cases": 6}, 6) == "follows the vessels more than a straight kernel"
    assert reading({**s, "adherence_diff_ci": [-0.04, -0.01]}, 4) == "samples less vessel than a straight kernel"
    assert reading({"cases": 0, "adherence_diff": None}, 6) == "no case with vessel at this layer"

"""``benchmarks/studies/real_data``: collect a harness results folder into the store, render the results page from
the store only. On fabricated results folders (``support.results``) whose answer is known: the variant gains 0.06
Dice / NSD / clDice on every case and nothing on HD95 and the Betti errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from support import REPO_ROOT
from support.results import fabricate_results_dir, write_segmentation

from nnunet_tubeconv.benchmarks.studies.real_data import page
from nnunet_tubeconv.benchmarks.studies.real_data.sections import (
    Settings,
    comparator_families,
    merged_suite,
)
from nnunet_tubeconv.benchmarks.studies.real_data.store import collect
from nnunet_tubeconv.evaluation import stats as st
from nnunet_tubeconv.evaluation.report import analyse, load_results_dir

DATASET = "Dataset902_DRIVE"
FAST = Settings(n_resamples=2000)
PROTOCOL = "# Results\n\nIntro.\n\n## Protocol (written before the first run)\n\nThe rules.\n\n"
STATUS = "## Status\n\nRuns in progress; tables follow as folds finish.\n"


def _edit_suite(root: Path, **arms) -> None:
    suite = json.loads((root / "suite.json").read_text())
    suite["name"] = "real-test"
    suite["seeds"] = [0]
    suite["arms"]["vanilla"]["seeds"] = [0, 1]
    suite["arms"].update(arms)
    suite["annotators"] = {"second_human": "labelsTr_observer2"}
    (root / "suite.json").write_text(json.dumps(suite))


def _copy_arm(root: Path, src: str, dest: str, trainer: str, seeds=(0,)) -> None:
    """A further arm: ``src``'s records of ``seeds`` under the name ``dest`` (the same values: no difference)."""
    base = root / "runs" / DATASET / "2d"
    for rec_path in sorted((base / src).glob("fold_*_seed_*/record.json")):
        rec = json.loads(rec_path.read_text())
        if rec["seed"] not in seeds:
            continue
        rec.update(arm=dest, trainer=trainer)
        out = base / dest / rec_path.parent.name / "record.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec))


def _annotator(root: Path, cases: list[str]) -> None:
    rows = [{"case": c, "label": 1, "dice": 0.8, "iou": 0.8 / 1.2, "hd95": 3.0, "nsd": 0.9, "cldice": 0.85,
             "betti0_error": 2, "betti1_error": 1, "betti2_error": None} for c in cases]
    out = root / "annotators" / DATASET / "second_human.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps({"schema": "nnunet-tubeconv/results/1", "per_case": rows}))


@pytest.fixture
def results(tmp_path) -> Path:
    """vanilla (seeds 0, 1), dsconv (+0.06), two folds of 8 cases; Skeleton Recall and Wide in the suite, not run;
    a second human's row."""
    root = fabricate_results_dir(tmp_path / "work" / "real_test", datasets=(DATASET,), configuration="2d",
                                 baseline="vanilla", variant="dsconv", variant_seeds=(0,), failed=[],
                                 folds=(0, 1), cases_per_fold=8)
    _edit_suite(root, skeleton_recall={"trainer": "nnUNetTrainerSkeletonRecall", "plans": "nnUNetPlans"},
                wide={"trainer": "nnUNetTrainerWide", "plans": "nnUNetPlans"})
    _annotator(root, [f"DRIVE_{i:03d}" for i in range(16)])
    return root


@pytest.fixture
def site(tmp_path) -> dict[str, Path]:
    """A results page with its protocol and the placeholder Status section, a store and an images folder."""
    p = tmp_path / "docs" / "results.md"
    p.parent.mkdir()
    p.write_text(PROTOCOL + STATUS)
    return {"page": p, "store": tmp_path / "store", "images": tmp_path / "docs" / "images"}


def _render(site) -> str:
    page.render(site["store"], site["page"], site["images"], suites=(), settings=FAST)
    return site["page"].read_text()


def _section(text: str, start: str, end: str = "\n**Against ") -> str:
    i = text.index(start)
    j = text.find(end, i + len(start))
    return text[i:j if j > 0 else None]


def _cell(table: str, arm: str, column: int) -> str:
    row = next(line for line in table.splitlines() if line.startswith(f"| {arm} "))
    return [c.strip() for c in row.strip("|").split("|")][column]


# ---------------------------------------------------------------------------------------------- collect
def test_collect_copies_records_in_the_harness_layout_and_is_idempotent(results, site):
    first = collect(results, site["store"])
    stored = site["store"] / "real-test"
    assert first.folder == stored and first.records == 6 and first.new == 8 and first.replaced == 0
    assert (stored / "suite.json").read_bytes() == (results / "suite.json").read_bytes()
    assert (stored / "annotators" / DATASET / "second_human.json").is_file()
    rel = Path("runs", DATASET, "2d", "dsconv", "fold_1_seed_0", "record.json")
    assert (stored / rel).read_bytes() == (results / rel).read_bytes()
    assert not list(stored.rglob("*.log"))
    # the store is a results folder the report reads
    suite, units = load_results_dir(stored)
    assert suite["name"] == "real-test" and len(units) == 6

    again = collect(results, site["store"])
    assert (again.new, again.replaced, again.unchanged) == (0, 0, 8)

    # a record re-evaluated in the work folder replaces the stored one
    rec = json.loads((results / rel).read_text())
    rec["reevaluated"] = {"at": "later"}
    (results / rel).write_text(json.dumps(rec))
    third = collect(results, site["store"])
    assert (third.new, third.replaced) == (0, 1)
    assert json.loads((stored / rel).read_text())["reevaluated"] == {"at": "later"}


def test_a_folder_that_is_not_a_results_folder_is_one_error_line(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert page.main(["collect", str(tmp_path / "plain"), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a harness results folder" in err[0] and "collect: error:" in err[0]
    assert page.main(["collect", str(tmp_path / "missing"), "--store", str(tmp_path / "store")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


def test_render_without_the_page_is_one_error_line(tmp_path, capsys):
    assert page.main(["render", "--store", str(tmp_path), "--page", str(tmp_path / "none.md"), "--suites"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- render
def test_render_gives_the_known_answer_from_the_store_alone(results, site):
    collect(results, site["store"])
    shutil.rmtree(results)                                  # the store alone reproduces the page
    text = _render(site)
    vs_vanilla = _section(text, "**Against vanilla**")
    dice = _cell(vs_vanilla, "dsconv", 1)
    m = re.match(r"\+(\d\.\d+) \[\+(\d\.\d+), \+(\d\.\d+)\], Holm p ([\d.<]+): \*\*better\*\*", dice)
    assert m, dice
    diff, low, high = (float(x) for x in m.groups()[:3])
    assert low <= diff <= high and abs(diff - 0.06) < 0.01
    # the numbers are the harness's: analyse on the store gives the same comparison
    suite, units = load_results_dir(site["store"] / "real-test")
    c = analyse(suite, units, n_resamples=FAST.n_resamples)[0].comparison("dsconv", "dice")
    assert f"{c.mean_diff:.3f}" == f"{diff:.3f}" and c.verdict == st.BETTER
    # no gain on the Betti errors: no verdict there
    assert "no evidence of a difference" in _cell(vs_vanilla, "dsconv", 5)
    assert "dsconv is better than vanilla on Dice" in text
    # the noise floor is vanilla's, measured on its two seeds
    assert "| noise floor (vanilla) | 0." in text


def test_arms_without_records_are_listed_as_not_run_and_the_annotator_row_is_shown(results, site):
    collect(results, site["store"])
    text = _render(site)
    assert "| skeleton_recall | `nnUNetTrainerSkeletonRecall` | 0 / 2 | – | – | not run |" in text
    assert "| wide | `nnUNetTrainerWide` | 0 / 2 | – | – | not run |" in text
    assert "| DRIVE | real-test | 6 / 10 | 0, 1 | vanilla, dsconv | skeleton_recall, wide |" in text
    assert "No verdicts against skeleton_recall, wide: not run yet." in text
    arms = _section(text, "### Arms", "### Paired verdicts")
    assert _cell(arms, "second_human (annotator, labelsTr_observer2)", 1) == "16"
    assert _cell(arms, "second_human (annotator, labelsTr_observer2)", 2) == "0.800 [0.800, 0.800]"
    assert "(1 resumed unit" not in text
    assert "predict s/case" in arms and "train s/iter" in arms


def test_postprocessed_scores_are_collected_and_shown_as_plus_pp_rows(results, site):
    scores = results / "postprocessing" / DATASET / "2d" / "dsconv" / "seed_0" / "scores.json"
    scores.parent.mkdir(parents=True)
    scores.write_text(json.dumps({"postprocessing": {}, "per_case": [
        {"case": f"DRIVE_{i:03d}", "label": 1, "dice": 0.9, "cldice": 0.8, "hd95": 2.0, "nsd": 0.9,
         "betti0_error": 1, "betti1_error": 0, "betti2_error": None} for i in range(16)]}))
    assert collect(results, site["store"]).new == 9
    text = _render(site)
    arms = _section(text, "### Arms", "### Paired verdicts")
    assert _cell(arms, "dsconv +pp", 1) == "16" and _cell(arms, "dsconv +pp", 2) == "0.900 [0.900, 0.900]"
    assert "`+pp` rows: the arm after its tube postprocessing" in arms
    raw_vs_pp = _section(text, "### Raw against postprocessed", "### Recall by vessel calibre")
    assert "does not choose a postprocessing" in raw_vs_pp  # the fabricated suite does not turn it on
    suite_file = results / "suite.json"
    suite_file.write_text(json.dumps({**json.loads(suite_file.read_text()), "postprocessing": True}))
    collect(results, site["store"])
    raw_vs_pp = _section(_render(site), "### Raw against postprocessed", "### Recall by vessel calibre")
    assert "optimistic by construction" in raw_vs_pp
    # postprocessed minus raw, over the same 16 cases: the dsconv +pp row holds a paired cell per tested metric
    row = next(line for line in raw_vs_pp.splitlines() if line.startswith("| dsconv +pp |"))
    assert row.count("|") == 2 + len(["dice", "cldice", "hd95", "nsd", "betti0_error", "betti1_error"])


def test_the_planned_suite_adds_the_arms_a_tier_run_left_out_of_suite_json():
    stored = {"name": "s", "baseline": "vanilla", "arms": {"vanilla": {"trainer": "nnUNetTrainer", "seeds": [0, 1]},
                                                             "dsconv": {"trainer": "nnUNetTrainerDSConv"}}}
    planned = {"name": "s", "arms": {"vanilla": {"trainer": "nnUNetTrainer", "seeds": None},
                                     "skeleton_recall": {"trainer": "nnUNetTrainerSkeletonRecall"},
                                     "dsconv": {"trainer": "nnUNetTrainerDSConv"},
                                     "tubeconv": {"trainer": "nnUNetTrainerTubeConv"}}}
    merged = merged_suite(stored, planned)
    assert list(merged["arms"]) == ["vanilla", "skeleton_recall", "dsconv", "tubeconv"]
    assert merged["arms"]["vanilla"]["seeds"] == [0, 1]


def test_every_comparator_gets_its_family_with_vanillas_noise_floor(results, site):
    _copy_arm(results, "vanilla", "wide", "nnUNetTrainerWide")
    collect(results, site["store"])
    suite, units = load_results_dir(site["store"] / "real-test")
    g = analyse(suite, units, n_resamples=FAST.n_resamples)[0]
    fams = comparator_families(g, suite, FAST)
    assert [f.comparator for f in fams] == ["vanilla", "wide"]
    assert fams[1].arms == ["dsconv"]                                   # vanilla is compared in vanilla's family
    for m in ("dice", "hd95"):
        assert fams[1].get("dsconv", m).noise_floor == fams[0].get("dsconv", m).noise_floor is not None
    assert fams[1].get("dsconv", "dice").verdict == st.BETTER
    text = _render(site)
    assert "**better**" in _cell(_section(text, "**Against wide**", "### Recall"), "dsconv", 1)


def test_too_few_cases_is_said_in_words(tmp_path, site):
    root = fabricate_results_dir(tmp_path / "small", datasets=(DATASET,), configuration="2d", baseline="vanilla",
                                 variant="dsconv", variant_seeds=(0,), failed=[], folds=(0,), cases_per_fold=4)
    _edit_suite(root)
    collect(root, site["store"])
    text = _render(site)
    assert "Too few cases for a test: 4 pairs, fewer than the 6 the harness needs" in text
    assert "too few cases to decide anything yet" in text
    assert "**better**" not in text


def test_rendering_twice_gives_the_same_text_and_keeps_the_protocol(results, site):
    collect(results, site["store"])
    first = _render(site)
    assert first.startswith(PROTOCOL + page.BEGIN)                     # the protocol above is untouched
    assert "Runs in progress" not in first                             # the placeholder is replaced
    assert first.count(page.BEGIN) == 1 and first.rstrip().endswith(page.END)
    assert _render(site) == first
    figure = site["images"] / "results_drive_paired.png"
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert "](images/results_drive_paired.png)" in first


def test_splice_touches_only_the_part_between_the_markers():
    tail = "## Later\n\nkept\n"
    once = page.splice(PROTOCOL + STATUS + tail, "## Status\n\nnew\n")
    assert once == PROTOCOL + f"{page.BEGIN}\n## Status\n\nnew\n{page.END}\n\n" + tail
    assert page.splice(once, "other\n") == PROTOCOL + f"{page.BEGIN}\nother\n{page.END}\n\n" + tail
    assert page.splice("# Page\n", "x\n") == f"# Page\n\n{page.BEGIN}\nx\n{page.END}\n"


# -------------------------------------------------------------------------------------------- case image
def _point_records_at(root: Path, gt: Path) -> None:
    for rec_path in root.glob("runs/*/*/*/*/record.json"):
        rec = json.loads(rec_path.read_text())
        rec["metrics"]["ref_dir"] = str(gt)
        rec_path.write_text(json.dumps(rec))


def test_collect_draws_the_case_image_of_the_first_validation_case(results, site, tmp_path, capsys):
    gt, raw = tmp_path / "gt", tmp_path / "raw" / DATASET / "imagesTr"
    ref = np.zeros((48, 64), np.uint8)
    ref[10:12, 4:60] = 1                                                # a thin vessel
    ref[20:30, 4:60] = 1                                                # a thick one
    write_segmentation(gt, "DRIVE_000", ref, (1.0, 1.0))
    write_segmentation(raw, "DRIVE_000_0000", 255 - 200 * ref, (1.0, 1.0))
    for arm in ("vanilla", "dsconv"):
        pred = ref.copy()
        if arm == "vanilla":
            pred[10:12] = 0                                             # misses the thin vessel
        write_segmentation(results / "runs" / DATASET / "2d" / arm / "fold_0_seed_0" / "validation", "DRIVE_000",
                           pred, (1.0, 1.0))
    _point_records_at(results, gt)
    assert page.main(["collect", str(results), "--store", str(site["store"]), "--images", str(site["images"]),
                      "--raw", str(tmp_path / "raw")]) == 0
    out = capsys.readouterr().out
    assert "case DRIVE_000, 2 arms" in out
    png = site["images"] / "results_drive_case.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = _render(site)
    assert "](images/results_drive_case.png)" in text


def test_the_default_paths_are_the_repositorys():
    assert page.PAGE == REPO_ROOT / "docs" / "results.md" and page.PAGE.is_file()
    assert all(s.is_file() for s in page.SUITES)


def test_the_error_map_and_the_zoom_window_in_3d():
    from nnunet_tubeconv.benchmarks.studies.real_data.case import MISSED, error_map, zoom_window

    ref = np.zeros((4, 32, 32), np.uint8)
    ref[1, 20, 2:30] = 1                                                # a thin vessel in one slice
    pred = np.zeros_like(ref)
    rgb = error_map(ref, pred)                                          # maximum projection along the first axis
    assert rgb.shape == (32, 32, 3)
    assert np.allclose(rgb[20, 5], [int(MISSED[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    r, _c, side = zoom_window(ref.any(axis=0).astype(int))
    assert side == 16 and r <= 20 < r + side

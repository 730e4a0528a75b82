"""`nnunet-tubeconv report`: tables, verdicts, failed units and a self-contained HTML that Chromium renders."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support.results import FABRICATED_ERROR, fabricate_results_dir

from nnunet_tubeconv.cli import main
from nnunet_tubeconv.evaluation.report import write_report

CHROMIUM_APT = "apt-get update && apt-get install -y chromium"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = fabricate_results_dir(tmp_path_factory.mktemp("bench") / "results")
    assert main(["report", str(root)]) == 0
    return root


def md_table_rows(md: str, first_header: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_layout_written_by_report(report):
    assert (report / "report.md").is_file() and (report / "report.html").is_file()
    pngs = sorted((report / "figures").glob("*.png"))
    assert len(pngs) == 3  # box plots, paired plots (one variant), training curves
    md = (report / "report.md").read_text()
    for png in pngs:
        assert f"](figures/{png.name})" in md
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_has_arm_rows_metric_columns_and_verdicts(report):
    md = (report / "report.md").read_text()
    assert "## Dataset901_SynthTubes — 3d_fullres" in md
    rows = md_table_rows(md, "arm")
    header = rows[0]
    for col in ("Dice ↑", "HD95 ↓", "clDice ↑", "Betti-0 err ↓", "Betti-2 err ↓", "params (M)", "iter. time (s)",
                "peak mem. (GiB)", "wall time (h, all units)"):
        assert col in header
    base, variant = rows[2], rows[3]
    assert base[0].startswith("baseline") and variant[0] == "dsconv"
    cell = dict(zip(header, variant))
    assert cell["Dice ↑"].endswith("(better)") and cell["clDice ↑"].endswith("(better)")
    assert cell["HD95 ↓"].endswith("(no evidence of a difference)")
    assert cell["params (M)"] == "33.50"


def test_table_numbers_come_from_the_records(report):
    """Recompute the baseline's Dice mean ± sd from the record files: per case, mean over seeds; pooled folds."""
    values: dict[str, list[float]] = {}
    for rec_path in (report / "runs").glob("*/*/baseline/*/record.json"):
        rec = json.loads(rec_path.read_text())
        for row in rec["metrics"]["per_case"]:
            values.setdefault(row["case"], []).append(row["dice"])
    per_case = np.array([np.mean(v) for v in values.values()])
    assert len(per_case) == 16
    rows = md_table_rows((report / "report.md").read_text(), "arm")
    cell = dict(zip(rows[0], rows[2]))["Dice ↑"]
    assert cell == f"{per_case.mean():.3f} ± {per_case.std(ddof=1):.3f}"


def test_detailed_comparisons_show_noise_floor_ci_and_holm(report):
    rows = md_table_rows((report / "report.md").read_text(), "variant")
    header = rows[0]
    dice = dict(zip(header, next(r for r in rows[2:] if r[1] == "Dice ↑")))
    assert dice["verdict"] == "better"
    floor = dice["noise floor [95% CI]"]  # the baseline ran seeds 0 and 1: a floor with its own interval
    assert re.fullmatch(r"\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]", floor)
    low, high = map(float, re.findall(r"-?\d+\.\d+", dice["95% CI of Δ"]))
    assert 0 < low < float(dice["mean Δ (variant − baseline)"]) < high
    assert float(dice["Holm p"].lstrip("<")) < 0.05


def test_failed_unit_is_listed_with_its_error(report):
    md = (report / "report.md").read_text()
    assert "## Failed units (1)" in md
    rows = md_table_rows(md, "data set")
    assert rows[2][:5] == ["Dataset901_SynthTubes", "3d_fullres", "dsconv", "1", "1"]
    assert rows[2][5] == FABRICATED_ERROR.splitlines()[-1]
    assert "Traceback (most recent call last)" in md  # the full error, below the table


def test_settings_and_how_to_read_are_stated(report):
    md = (report / "report.md").read_text()
    assert "## How to read this" in md and "no evidence of a difference" in md
    assert "NSD tolerance 1.0" in md and "2D 8/4, 3D 26/6" in md
    assert "10000 resamples" in md


def test_html_is_self_contained(report):
    from PIL import Image

    page = (report / "report.html").read_text()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)
    assert len(srcs) == 3
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.width > 200 and img.height > 100
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert page.count("<table") == 3 and "<style>" in page


def test_one_baseline_seed_two_datasets_and_missing_units(tmp_path):
    root = fabricate_results_dir(tmp_path / "r", datasets=("Dataset901_A", "Dataset902_B"), baseline_seeds=(0,),
                                 variant_seeds=(0,), failed=[], cases_per_fold=4)
    suite = json.loads((root / "suite.json").read_text())
    suite["seeds"] = [0, 1]
    suite["arms"]["baseline"]["seeds"] = None  # as the harness writes an arm without its own seeds
    (root / "suite.json").write_text(json.dumps(suite))
    bad = root / "runs" / "Dataset902_B" / "3d_fullres" / "dsconv" / "fold_0_seed_0" / "record.json"
    bad.write_text("{ truncated")
    for rec_path in (root / "runs" / "Dataset901_A").glob("*/*/*/record.json"):
        rec = json.loads(rec_path.read_text())
        for row in rec["metrics"]["per_case"]:
            if row["case"] == "A_000":
                row["dice"] = None  # what results.json holds for a NaN Dice (both masks empty)
        rec_path.write_text(json.dumps(rec))
    md_path, _ = write_report(root, n_resamples=1000)
    md = md_path.read_text()
    dice_rows = [r for r in md_table_rows(md[md.index("## Dataset901_A"):], "variant")[2:] if r[1] == "Dice ↑"]
    assert dice_rows[0][2] == "7 of 8 (1 dropped)"
    assert "## Dataset901_A — 3d_fullres" in md and "## Dataset902_B — 3d_fullres" in md
    assert "no noise floor" in md
    assert "unreadable record.json" in md
    assert "## Units without a record (8)" in md  # seed 1 of both arms, 2 folds, 2 data sets


def test_group_without_baseline_says_so_and_2d_has_no_betti2(tmp_path):
    root = fabricate_results_dir(tmp_path / "r", configuration="2d", failed=[
        ("baseline", 0, 0), ("baseline", 1, 0), ("baseline", 0, 1), ("baseline", 1, 1)])
    md = write_report(root, n_resamples=500)[0].read_text()
    assert "has no completed unit here: no paired comparison" in md
    assert "## Failed units (4)" in md
    header = md_table_rows(md, "arm")[0]
    assert "Betti-1 err ↓" in header and "Betti-2 err ↓" not in header


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "suite.json" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "suite.json").write_text("{ not json")
    assert main(["report", str(tmp_path / "broken")]) == 2
    assert capsys.readouterr().err.startswith("nnunet-tubeconv report: error: ")
    assert main(["report", str(tmp_path / "broken"), "--alpha", "1.5"]) == 2
    assert "--alpha in (0, 1)" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

PROBE = ("<script>window.addEventListener('load',function(){var p=document.createElement('pre');p.id='probe';"
         "p.textContent=JSON.stringify({tables:document.querySelectorAll('table').length,imgs:Array.prototype.map.call("
         "document.images,function(i){return [i.complete,i.naturalWidth,i.naturalHeight];})});"
         "document.body.appendChild(p);});</script>")


@pytest.mark.skipif(_chromium() is None, reason=f"chromium not installed; install it with: {CHROMIUM_APT}")
def test_html_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    chromium = _chromium()
    probe = tmp_path / "probe.html"
    probe.write_text((report / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'ud1'}",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    m = re.search(r'<pre id="probe">([^<]*)</pre>', dom.stdout)
    assert m, f"no probe output; chromium said: {dom.stderr[-2000:]}"
    found = json.loads(m.group(1))
    assert found["tables"] == 3
    assert len(found["imgs"]) == 3
    for complete, width, height in found["imgs"]:
        assert complete and width > 200 and height > 100  # decoded, not a broken-image placeholder

    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'ud2'}", "--window-size=1280,2000",
                    "--hide-scrollbars", f"--screenshot={shot}", (report / "report.html").as_uri()],
                   check=False, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # not a blank page


# ------------------------------------------------------------------ labels, missing cases, power, report.json
def _dice_row(md: str, section: str) -> dict[str, str]:
    part = md[md.index(section):]
    rows = md_table_rows(part, "variant")
    return dict(zip(rows[0], next(r for r in rows[2:] if r[1] == "Dice ↑")))


def test_each_label_is_its_own_family_and_table(tmp_path):
    """A gain on label 2 only must not make label 1 'better'; each label gets its own table and Holm family."""
    root = fabricate_results_dir(tmp_path / "r", labels=(1, 2), effect_labels=(2,),
                                 label_names={1: "vessel", 2: "tumour"}, failed=[])
    md = write_report(root, n_resamples=1000)[0].read_text()
    assert "### Label 1 (vessel)" in md and "### Label 2 (tumour)" in md
    one, two = _dice_row(md, "### Label 1 (vessel)"), _dice_row(md, "### Label 2 (tumour)")
    assert one["pairs (of expected)"] == "16 of 16" and two["pairs (of expected)"] == "16 of 16"  # not 32 pooled
    assert one["verdict"] != "better" and two["verdict"] == "better"
    rep = json.loads((root / "report.json").read_text())
    fams = {f["label"]: f for f in rep["families"]}
    assert set(fams) == {"1", "2"} and fams["2"]["label_name"] == "tumour"
    for f in fams.values():  # Holm within the label: 7 tested metrics in 3D (IoU out), one variant
        tested = [c for c in f["comparisons"] if c["tested"]]
        assert len(tested) == 7 and all(c["family_size"] == 7 for c in tested)
        assert next(c for c in f["comparisons"] if c["metric"] == "iou")["verdict"] == "not tested"


def test_failed_fold_withholds_verdicts_unless_complete_case(tmp_path, capsys):
    root = fabricate_results_dir(tmp_path / "r", failed=[("dsconv", 1, 0), ("dsconv", 1, 1)], cases_per_fold=10)
    md = write_report(root, n_resamples=1000)[0].read_text()
    dice = _dice_row(md, "### Label 1")
    assert dice["pairs (of expected)"] == "10 of 20" and dice["verdict"] == "withheld: cases missing"
    assert "dsconv lacks 10 of 20 cases" in dice["note"]
    arm_rows = md_table_rows(md, "arm")
    assert dict(zip(arm_rows[0], arm_rows[3]))["cases"] == "10 of 20 (lacks 10)"
    assert main(["report", str(root), "--complete-case", "--n-resamples", "500"]) == 0
    md = (root / "report.md").read_text()
    dice = _dice_row(md, "### Label 1")
    assert dice["verdict"] == "better" and "complete-case analysis" in dice["note"]
    assert json.loads((root / "report.json").read_text())["complete_case"] is True


def test_eight_pairs_and_seven_metrics_are_too_few_to_decide(tmp_path):
    """The demo's situation with 3D metrics: 2/2^8 * 7 = 0.0547 >= 0.05, whatever the data."""
    root = fabricate_results_dir(tmp_path / "r", cases_per_fold=4, failed=[], effect=0.2)
    md = write_report(root, n_resamples=500)[0].read_text()
    dice = _dice_row(md, "### Label 1")
    assert dice["verdict"] == "too few cases to decide (n=8, smallest reachable adjusted p=0.05469)"
    assert dice["smallest reachable Holm p"] == "0.0547"
    assert "not below alpha = 0.05: too few cases to decide" in md
    assert "no evidence of a difference" not in dice["verdict"]


def test_report_json_states_test_and_direction_rule(report):
    from nnunet_tubeconv.evaluation import stats as st

    rep = json.loads((report / "report.json").read_text())
    assert rep["test"] == st.TEST_NAME and rep["direction_rule"] == st.DIRECTION_RULE
    assert "rank-biserial" in rep["direction_rule"] and rep["alpha"] == 0.05
    dice = next(c for c in rep["families"][0]["comparisons"] if c["metric"] == "dice")
    assert dice["verdict"] == "better" and dice["n"] == 16
    assert dice["p_min"] == pytest.approx(2 / 2**16)  # exact test up to 16 pairs
    assert dice["noise_floor_ci"] is not None and len(dice["noise_floor_ci"]) == 2


def test_across_data_sets_summary_ranks_and_stratified_test(tmp_path):
    root = fabricate_results_dir(tmp_path / "r", datasets=("Dataset901_A", "Dataset902_B"), failed=[])
    md = write_report(root, n_resamples=500)[0].read_text()
    assert "## Across data sets" in md
    ranks = md_table_rows(md[md.index("## Across data sets"):], "arm")
    header = ranks[0]
    by_arm = {r[0]: dict(zip(header, r)) for r in ranks[2:]}
    assert by_arm["dsconv"]["Dice ↑ (mean rank)"] == "1.00" and by_arm["baseline"]["Dice ↑ (mean rank)"] == "2.00"
    rows = md_table_rows(md[md.index("## Across data sets"):], "variant")
    dice = dict(zip(rows[0], next(r for r in rows[2:] if r[1] == "Dice ↑")))
    assert dice["families"] == "2" and dice["wins"] == "2 of 2" and dice["verdict"] == "better"
    assert dice["pairs"] == "32" and dice["smallest reachable Holm p"] == "0.0003"  # 7 tests x 1/20001 = 0.00035
    rep = json.loads((root / "report.json").read_text())
    assert rep["across_datasets"]["mean_rank"]["dsconv"]["dice"] == 1.0
    single = fabricate_results_dir(tmp_path / "s", failed=[])
    assert "Across data sets" not in write_report(single, n_resamples=200)[0].read_text()
    assert json.loads((single / "report.json").read_text())["across_datasets"] is None


def test_heldout_test_records_get_their_own_labelled_tables(tmp_path):
    """Records under test_seed_<s> (split "test") are reported in a separate held-out section, never pooled with
    the validation cases."""
    from nnunet_tubeconv.evaluation.layout import test_rel_dir

    root = fabricate_results_dir(tmp_path / "r", failed=[])
    for arm, gain in (("baseline", 0.0), ("dsconv", 0.1)):
        for s in (0, 1):
            src = json.loads((root / "runs" / "Dataset901_SynthTubes" / "3d_fullres" / arm / f"fold_0_seed_{s}"
                              / "record.json").read_text())
            for row in src["metrics"]["per_case"]:
                row["case"] = "test_" + row["case"]
                row["dice"] = 0.5 + gain + 0.001 * int(row["case"][-3:])
            src.update(split="test", fold=None, folds=[0, 1])
            out = root / test_rel_dir("Dataset901_SynthTubes", "3d_fullres", arm, s) / "record.json"
            out.parent.mkdir(parents=True)
            out.write_text(json.dumps(src))
    md = write_report(root, n_resamples=500)[0].read_text()
    main_part, test_part = md.split("## Held-out test set: Dataset901_SynthTubes — 3d_fullres")
    assert "nothing (arms, options, budgets) was chosen on them" in test_part
    assert "test_" not in main_part.split("## Failed units")[0]  # validation tables hold validation cases only
    assert md_table_rows(main_part[main_part.index("## Dataset901"):], "arm")[2][2] == "16 of 16"
    test_rows = md_table_rows(test_part, "arm")
    assert test_rows[2][2] == "8 of 8" and dict(zip(test_rows[0], test_rows[3]))["Dice ↑"].startswith("0.6")
    assert "## Units without a record (0)" not in md and "Failed units (0)" in md
    rep = json.loads((root / "report.json").read_text())
    assert rep["heldout_test"][0]["cases"] == {"baseline": 8, "dsconv": 8}

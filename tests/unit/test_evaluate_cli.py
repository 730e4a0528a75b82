"""`nnunet-tubeconv evaluate` and evaluate_folders: schema, header spacing, refusals with exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from support.results import write_segmentation as write_case

from nnunet_tubeconv.cli import main
from nnunet_tubeconv.evaluation import SCHEMA, EvaluationInputError, evaluate_folders, load_results, save_results
from nnunet_tubeconv.evaluation.metrics import METRICS


def tubes(shape=(8, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros(shape, np.uint8)
    ref[2:6, 2:22, 8:11] = 1  # a vessel
    ref[3:5, 10:14, 14:18] = 2  # a second structure
    pred = ref.copy()
    pred[2:6, 11:13, 8:11] = 0  # vessel cut in two
    return ref, pred


@pytest.fixture
def folders(tmp_path):
    ref, pred = tubes()
    for i in range(3):
        write_case(tmp_path / "ref", f"c{i}", ref, (2.0, 0.5, 0.5), ".nii.gz")
        write_case(tmp_path / "pred", f"c{i}", pred if i else ref, (2.0, 0.5, 0.5), ".nii.gz")
    return tmp_path / "pred", tmp_path / "ref"


def test_evaluate_folders_schema_and_values(folders):
    pred_dir, ref_dir = folders
    res = evaluate_folders(pred_dir, ref_dir, progress=False, nsd_tolerance_mm=0.5)
    assert res["schema"] == SCHEMA
    assert res["labels"] == [1, 2]  # found in the files
    assert res["spacing_source"] == "image header"
    assert res["settings"]["nsd_tolerance_mm"] == 0.5
    assert res["settings"]["connectivity"]["3d"] == {"foreground": 26, "background": 6}
    assert res["settings"]["dimensions"] == [3]
    assert [(r["case"], r["label"]) for r in res["per_case"]] == [(c, lab) for c in ("c0", "c1", "c2")
                                                                  for lab in (1, 2)]
    for row in res["per_case"]:
        assert set(METRICS) <= set(row)
    by = {(r["case"], r["label"]): r for r in res["per_case"]}
    assert by[("c0", 1)]["dice"] == 1.0 and by[("c0", 1)]["betti0_error"] == 0
    assert by[("c1", 1)]["betti0_error"] == 1  # the cut
    assert by[("c1", 2)]["dice"] == 1.0
    assert res["mean"]["1"]["betti0_error"] == pytest.approx(2 / 3)
    assert res["mean"]["1"]["dice"] == pytest.approx(np.mean([by[(c, 1)]["dice"] for c in ("c0", "c1", "c2")]))


def test_spacing_comes_from_the_header(tmp_path):
    ref = np.zeros((5, 12, 12), np.uint8)
    pred = np.zeros_like(ref)
    ref[2, 3, 2:10] = 1
    pred[2, 6, 2:10] = 1  # 3 voxels apart along the second axis
    for sp in ((1.0, 1.0, 1.0), (1.0, 0.25, 1.0)):
        write_case(tmp_path / str(sp[1]) / "ref", "a", ref, sp, ".nii.gz")
        write_case(tmp_path / str(sp[1]) / "pred", "a", pred, sp, ".nii.gz")
    iso = evaluate_folders(tmp_path / "1.0" / "pred", tmp_path / "1.0" / "ref", progress=False)
    aniso = evaluate_folders(tmp_path / "0.25" / "pred", tmp_path / "0.25" / "ref", progress=False)
    assert iso["per_case"][0]["hd95"] == pytest.approx(3.0)
    assert aniso["per_case"][0]["hd95"] == pytest.approx(0.75)


def test_2d_png_folders(tmp_path):
    ref = np.zeros((20, 20), np.uint8)
    ref[4:16, 4:16] = 1
    ref[8:12, 8:12] = 0  # a ring: one hole
    pred = ref.copy()
    pred[8:12, 8:12] = 1  # hole filled
    write_case(tmp_path / "ref", "img", ref, (1, 1), ".png")
    write_case(tmp_path / "pred", "img", pred, (1, 1), ".png")
    res = evaluate_folders(tmp_path / "pred", tmp_path / "ref", labels=[1], progress=False)
    row = res["per_case"][0]
    assert res["settings"]["dimensions"] == [2]
    assert row["betti1_error"] == 1 and row["betti0_error"] == 0 and row["betti2_error"] is None
    assert res["mean"]["1"]["betti2_error"] is None


def test_regions_like_nnunet(folders):
    pred_dir, ref_dir = folders
    res = evaluate_folders(pred_dir, ref_dir, labels=[(1, 2)], progress=False)
    assert res["labels"] == [[1, 2]]
    assert set(res["mean"]) == {"(1, 2)"}  # nnU-Net's key for a region


def test_results_json_round_trip_writes_null_for_nan(tmp_path):
    empty = np.zeros((6, 6, 6), np.uint8)
    write_case(tmp_path / "ref", "e", empty, (1, 1, 1), ".nii.gz")
    write_case(tmp_path / "pred", "e", empty, (1, 1, 1), ".nii.gz")
    res = evaluate_folders(tmp_path / "pred", tmp_path / "ref", labels=[1], progress=False)
    out = tmp_path / "results.json"
    save_results(res, out)

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    raw = json.loads(out.read_text(), parse_constant=refuse)  # strict JSON: no NaN / Infinity tokens
    assert raw["per_case"][0]["dice"] is None and raw["mean"]["1"]["dice"] is None
    back = load_results(out)
    assert math.isnan(back["per_case"][0]["dice"]) and back["per_case"][0]["betti0_error"] == 0


def test_multiprocessing_gives_the_same_rows(folders):
    pred_dir, ref_dir = folders
    one = evaluate_folders(pred_dir, ref_dir, progress=False)
    two = evaluate_folders(pred_dir, ref_dir, num_processes=2, progress=False)
    # compared as JSON text: a NaN (a band without centreline) is not equal to the NaN of another process
    assert json.dumps(one["per_case"]) == json.dumps(two["per_case"])


def test_cli_writes_results_json(folders, tmp_path, capsys):
    pred_dir, ref_dir = folders
    out = tmp_path / "out" / "results.json"
    code = main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--labels", "1", "-o", str(out),
                 "-np", "1", "--nsd-tolerance", "2", "--connectivity", "face", "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["labels"] == [1] and len(data["per_case"]) == 3
    assert data["settings"]["nsd_tolerance_mm"] == 2.0 and data["settings"]["connectivity"]["mode"] == "face"
    assert "label 1" in capsys.readouterr().out


def _refused(args, capsys) -> str:
    code = main(["evaluate", *map(str, args), "--no-progress", "-np", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    return err


def test_cli_refuses_mismatched_case_lists(folders, capsys):
    pred_dir, ref_dir = folders
    (pred_dir / "c1.nii.gz").unlink()
    (pred_dir / "c0.nii.gz").rename(pred_dir / "zz.nii.gz")
    err = _refused(["--pred", pred_dir, "--ref", ref_dir], capsys)
    assert "c0" in err and "c1" in err and "zz" in err


def test_one_folds_predictions_against_all_references(folders, capsys):
    pred_dir, ref_dir = folders
    (pred_dir / "c0.nii.gz").unlink()  # like nnU-Net's fold_x/validation against gt_segmentations
    assert [r["case"] for r in evaluate_folders(pred_dir, ref_dir, labels=[1], cases="pred",
                                                progress=False)["per_case"]] == ["c1", "c2"]
    assert [r["case"] for r in evaluate_folders(pred_dir, ref_dir, labels=[1], cases=["c2"],
                                                progress=False)["per_case"]] == ["c2"]
    with pytest.raises(EvaluationInputError, match="no prediction for 1 case"):
        evaluate_folders(pred_dir, ref_dir, labels=[1], cases=["c0", "c1"], progress=False)
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--pred-cases-only", "-np", "1",
                 "--no-progress", "-o", str(pred_dir.parent / "r.json")]) == 0
    assert "2 cases" in capsys.readouterr().out
    assert "c0" in _refused(["--pred", pred_dir, "--ref", ref_dir], capsys)


def test_cli_refuses_mismatched_shape_and_spacing(folders, capsys):
    pred_dir, ref_dir = folders
    ref, _ = tubes()
    write_case(pred_dir, "c1", np.zeros((8, 24, 21), np.uint8), (2.0, 0.5, 0.5), ".nii.gz")
    write_case(pred_dir, "c2", ref, (2.0, 0.5, 0.6), ".nii.gz")
    err = _refused(["--pred", pred_dir, "--ref", ref_dir], capsys)
    assert "c1: shape" in err and "c2: spacing" in err and "c0" not in err


def test_cli_refuses_missing_folder_and_unreadable_file(folders, tmp_path, capsys):
    pred_dir, ref_dir = folders
    err = _refused(["--pred", tmp_path / "nowhere", "--ref", ref_dir], capsys)
    assert "nowhere" in err
    (pred_dir / "c2.nii.gz").write_bytes(b"not an image")
    err = _refused(["--pred", pred_dir, "--ref", ref_dir], capsys)
    assert "c2: cannot read" in err


def test_bad_settings_and_labels_raise(folders):
    pred_dir, ref_dir = folders
    with pytest.raises(EvaluationInputError, match="connectivity"):
        evaluate_folders(pred_dir, ref_dir, progress=False, connectivity="corner")
    with pytest.raises(EvaluationInputError, match="unknown setting"):
        evaluate_folders(pred_dir, ref_dir, progress=False, tolerance=1)
    with pytest.raises(EvaluationInputError, match="positive integers"):
        evaluate_folders(pred_dir, ref_dir, labels=[0], progress=False)


def test_file_ending_detection_prefers_nii_gz(folders):
    from nnunet_tubeconv.evaluation.folders import detect_file_ending

    pred_dir, ref_dir = folders
    (ref_dir / "notes.txt").write_text("ignored")
    assert detect_file_ending(ref_dir) == ".nii.gz"
    assert Path(evaluate_folders(pred_dir, ref_dir, progress=False)["ref_dir"]) == ref_dir


# ------------------------------------------------------ field of view (masks such as DRIVE's), labels from dataset.json
def blob_outside_the_field_of_view() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A vessel, its prediction with a false-positive blob outside the field of view, and the field of view."""
    ref = np.zeros((1, 20, 20), np.uint8)
    ref[0, 5:15, 8:11] = 1
    pred = ref.copy()
    pred[0, 1:3, 1:3] = 1  # outside the field of view
    fov = np.zeros_like(ref)
    fov[0, 4:18, 4:18] = 1
    return ref, pred, fov


def test_mask_dir_restricts_every_metric_to_the_field_of_view(tmp_path):
    """A false-positive blob outside the FOV mask costs Dice and a component without the mask, nothing with it."""
    ref, pred, fov = blob_outside_the_field_of_view()
    write_case(tmp_path / "ref", "c0", ref, (1.0, 1.0, 1.0))
    write_case(tmp_path / "pred", "c0", pred, (1.0, 1.0, 1.0))
    write_case(tmp_path / "fov", "c0", fov, (1.0, 1.0, 1.0))
    plain = evaluate_folders(tmp_path / "pred", tmp_path / "ref", progress=False)["per_case"][0]
    assert plain["dice"] == pytest.approx(2 * 30 / (30 + 34)) and plain["betti0_error"] == 1
    res = evaluate_folders(tmp_path / "pred", tmp_path / "ref", progress=False, mask_dir=tmp_path / "fov")
    row = res["per_case"][0]
    assert row["dice"] == 1.0 and row["betti0_error"] == 0 and row["n_pred"] == 30
    assert res["mask_dir"] == str(tmp_path / "fov")
    (tmp_path / "fov2").mkdir()
    with pytest.raises(EvaluationInputError, match="no .nii.gz mask in .* for 1 case"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", progress=False, mask_dir=tmp_path / "fov2")
    out = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--mask-dir",
                 str(tmp_path / "fov"), "-o", str(out), "--no-progress", "-np", "1"]) == 0
    assert json.loads(out.read_text())["per_case"][0]["dice"] == 1.0


def test_labels_and_regions_come_from_dataset_json(folders, tmp_path):
    from nnunet_tubeconv.evaluation.folders import labels_from_dataset_json

    plain = {"labels": {"background": 0, "vessel": 1, "tumour": 2}, "file_ending": ".nii.gz"}
    assert labels_from_dataset_json(plain) == ([1, 2], {"1": "vessel", "2": "tumour"})
    regions = {"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2]}
    assert labels_from_dataset_json(regions) == ([(1, 2), 2], {"(1, 2)": "whole", "2": "core"})
    pred_dir, ref_dir = folders
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps(regions))
    out = tmp_path / "r.json"
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--dataset-json", str(dj), "-o",
                 str(out), "--no-progress", "-np", "1"]) == 0
    res = json.loads(out.read_text())
    assert res["labels"] == [[1, 2], 2] and res["label_names"] == {"(1, 2)": "whole", "2": "core"}
    whole = next(r for r in res["per_case"] if r["case"] == "c1" and r["label"] == [1, 2])
    assert whole["n_ref"] == 4 * 20 * 3 + 2 * 4 * 4  # the region is the union of labels 1 and 2
    assert whole["betti0_error"] == 1  # two components in the reference, three after the cut


def test_harness_evaluation_uses_dataset_json_labels_and_fov_masks(tmp_path):
    """The harness's per-unit evaluation: labels and names from the preprocessed dataset.json, and the raw data
    set's masksTr (what convert drive writes) as field of view."""
    from nnunet_tubeconv.benchmarks.executors import UnitContext, evaluate_validation
    from nnunet_tubeconv.benchmarks.suite import Unit

    ds = "Dataset950_Fov"
    pre, raw, res = tmp_path / "pre" / ds, tmp_path / "raw" / ds, tmp_path / "res"
    (pre / "gt_segmentations").mkdir(parents=True)
    (pre / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "vessel": 1}, "file_ending": ".nii.gz"}))
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["c1"], "val": ["c0"]}]))
    ctx = UnitContext(unit=Unit(ds, "2d", "base", 0, 0), results_dir=str(res), trainer="nnUNetTrainer",
                      generated_trainer="T", plans="nnUNetPlans", budget={}, device="cpu", npz=False,
                      env={"nnUNet_preprocessed": str(tmp_path / "pre"), "nnUNet_raw": str(tmp_path / "raw"),
                           "nnUNet_results": str(res)})
    ref, pred, fov = blob_outside_the_field_of_view()
    write_case(pre / "gt_segmentations", "c0", ref, (1.0, 1.0, 1.0))
    write_case(ctx.nnunet_fold_dir / "validation", "c0", pred, (1.0, 1.0, 1.0))
    no_mask = evaluate_validation(ctx)
    assert no_mask["mask_dir"] is None and no_mask["per_case"][0]["betti0_error"] == 1
    assert no_mask["labels"] == [1] and no_mask["label_names"] == {"1": "vessel"}
    write_case(raw / "masksTr", "c0", fov, (1.0, 1.0, 1.0))
    with_mask = evaluate_validation(ctx)
    assert with_mask["mask_dir"] == str(raw / "masksTr")
    assert with_mask["per_case"][0]["dice"] == 1.0 and with_mask["per_case"][0]["betti0_error"] == 0

"""Dice and IoU agree with nnU-Net's own evaluator (summary.json) on the same files, 3D NIfTI and 2D PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from support.results import write_segmentation as write_case

from nnunet_tubeconv.evaluation import evaluate_folders


def random_pair(rng: np.random.Generator, shape, empty_label_2: bool) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros(shape, np.uint8)
    ref[rng.random(shape) > 0.7] = 1
    if not empty_label_2:
        ref[rng.random(shape) > 0.9] = 2
    pred = ref.copy()
    flip = rng.random(shape) > 0.85
    pred[flip] = rng.integers(0, 2 if empty_label_2 else 3, size=int(flip.sum()))
    return ref, pred


@pytest.mark.parametrize("ending,shape,spacing", [(".nii.gz", (6, 20, 18), (2.5, 0.7, 0.7)),
                                                  (".png", (24, 30), (1.0, 1.0))])
def test_dice_iou_match_nnunet_summary_json(tmp_path, ending, shape, spacing):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    rng = np.random.default_rng(0)
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    for i in range(4):
        # case 3 has label 2 in neither file: nnU-Net gives NaN there, and so must we
        ref, pred = random_pair(rng, shape, empty_label_2=(i == 3))
        write_case(ref_dir, f"case_{i:03d}", ref, spacing, ending)
        write_case(pred_dir, f"case_{i:03d}", pred, spacing, ending)
    example = str(next(ref_dir.iterdir()))
    rw = determine_reader_writer_from_file_ending(ending, example, verbose=False)()
    summary_file = tmp_path / "summary.json"
    compute_metrics_on_folder(str(ref_dir), str(pred_dir), str(summary_file), rw, ending, [1, 2], num_processes=1)
    summary = json.loads(summary_file.read_text())

    ours = evaluate_folders(pred_dir, ref_dir, labels=[1, 2], progress=False)
    assert ours["settings"]["reader"] == type(rw).__name__
    rows = {(r["case"], str(r["label"])): r for r in ours["per_case"]}
    assert len(rows) == 8
    n_nan = 0
    for entry in summary["metric_per_case"]:
        case = Path(entry["prediction_file"]).name[: -len(ending)]
        for label, m in entry["metrics"].items():
            for theirs_key, our_key in (("Dice", "dice"), ("IoU", "iou")):
                theirs, mine = m[theirs_key], rows[(case, label)][our_key]
                if theirs is None or (isinstance(theirs, float) and math.isnan(theirs)):
                    assert math.isnan(mine), (case, label, our_key)
                    n_nan += 1
                else:
                    assert mine == pytest.approx(theirs, abs=1e-6), (case, label, our_key)
    assert n_nan == 2  # case_003 label 2, Dice and IoU
    for label in ("1", "2"):
        for theirs_key, our_key in (("Dice", "dice"), ("IoU", "iou")):
            assert ours["mean"][label][our_key] == pytest.approx(summary["mean"][label][theirs_key], abs=1e-6)

"""Topology-aware postprocessing (nnunet_tubeconv.postprocessing): known answers of the component removal (2D, 3D,
regions, physical sizes), nnU-Net's pkl format and its own apply_postprocessing, the determination on a fabricated
model folder (speckles, true fragments, the tolerance rule), and bad input.

The fabricated model folder (:func:`fake_model_folder`, a helper of this file only) is what ``nnUNetv2_train`` and
``nnUNetv2_plan_and_preprocess`` leave behind, as far as the determination reads it: ``plans.json``,
``dataset.json``, ``fold_<f>/validation/*.nii.gz`` and ``$nnUNet_preprocessed/<dataset>/gt_segmentations``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from support.plans import TINY_DATASET_JSON, tiny_plans
from support.results import write_segmentation

from nnunet_tubeconv.evaluation import metrics
from nnunet_tubeconv.postprocessing.components import remove_small_components, spatial_dims, voxel_measure

FN_PATH = "nnunet_tubeconv.postprocessing.components.remove_small_components"


def _n_components(mask: np.ndarray, connectivity: str = "full") -> int:
    return len(metrics.component_sizes(mask, connectivity)[1]) - 1


# ---------------------------------------------------------------------------------------------------------------
# the component removal: known answers


def test_speckles_are_removed_and_the_vessel_kept_in_2d():
    seg = np.zeros((40, 40), np.uint8)
    seg[5:8, 2:38] = 1  # a vessel of 108 px
    seg[20, 20] = 1  # speckles: 1, 4 and 9 px
    seg[25:27, 5:7] = 1
    seg[30:33, 30:33] = 1
    out = remove_small_components(seg, 1, min_size=10, voxel_size=(1.0, 1.0))
    expected = np.zeros_like(seg)
    expected[5:8, 2:38] = 1
    np.testing.assert_array_equal(out, expected)
    # threshold 9 keeps the 9-px speckle: components of exactly min_size stay
    out9 = remove_small_components(seg, 1, min_size=9, voxel_size=(1.0, 1.0))
    assert out9[30:33, 30:33].all() and not out9[25:27, 5:7].any()


def test_a_thin_vessel_touching_a_thick_one_is_kept():
    seg = np.zeros((40, 40), np.uint8)
    seg[5:11, 2:38] = 1  # thick vessel
    rows = np.arange(11, 30)
    seg[rows, rows] = 1  # a one-pixel-wide diagonal branch leaving it (8-connected to it, 19 px on its own)
    seg[35, 35] = 1  # a speckle
    out = remove_small_components(seg, 1, min_size=30, voxel_size=(1.0, 1.0))
    assert out[rows, rows].all() and out[5:11, 2:38].all()
    assert out[35, 35] == 0
    # face connectivity cuts the diagonal branch into single pixels, which then go
    face = remove_small_components(seg, 1, min_size=30, voxel_size=(1.0, 1.0), connectivity="face")
    assert not face[rows[1:], rows[1:]].any() and face[5:11, 2:38].all()


def test_a_tree_cut_in_two_by_the_field_of_view_keeps_both_parts():
    seg = np.zeros((60, 60), np.uint8)
    seg[10:13, 0:25] = 1  # the same vessel leaves the field of view ...
    seg[10:13, 35:60] = 1  # ... and comes back: two large components, 75 px each
    seg[40:42, 40:42] = 1  # and a 4-px speckle
    out = remove_small_components(seg, 1, min_size=20, voxel_size=(1.0, 1.0))
    assert out[10:13, 0:25].all() and out[10:13, 35:60].all() and not out[40:42, 40:42].any()
    assert _n_components(out == 1) == 2  # nnU-Net's "keep the largest component" would keep one


def test_3d_full_connectivity_and_speckles():
    seg = np.zeros((12, 20, 20), np.uint8)
    seg[2:10, 5:7, 5:7] = 1  # a tube of 32 voxels
    idx = np.arange(4)
    seg[idx + 1, idx + 12, idx + 12] = 1  # a 26-connected diagonal chain of 4 voxels (4 components at 6-conn.)
    seg[10, 18, 2] = 1  # a 1-voxel speckle
    out = remove_small_components(seg, 1, min_size=4, voxel_size=(1.0, 1.0, 1.0))
    assert out[2:10, 5:7, 5:7].all() and out[idx + 1, idx + 12, idx + 12].all() and out[10, 18, 2] == 0
    face = remove_small_components(seg, 1, min_size=4, voxel_size=(1.0, 1.0, 1.0), connectivity="face")
    assert not face[idx + 1, idx + 12, idx + 12].any() and face[2:10, 5:7, 5:7].all()


def test_other_labels_are_untouched_and_removed_voxels_become_background():
    seg = np.zeros((30, 30), np.uint8)
    seg[2:5, 2:28] = 1
    seg[10, 10] = 1  # speckle of label 1
    seg[20, 20] = 2  # speckle of label 2: not this step's label
    out = remove_small_components(seg, 1, min_size=5, voxel_size=(1.0, 1.0), background_label=0)
    assert out[10, 10] == 0 and out[20, 20] == 2 and out[2:5, 2:28].all()


def test_regions_count_the_union_of_their_labels():
    seg = np.zeros((30, 30), np.uint8)
    seg[5:8, 2:20] = 1  # 54 px of label 1 ...
    seg[8:10, 10:12] = 2  # ... touched by 4 px of label 2: one component of the region (1, 2)
    seg[20:22, 20:22] = 2  # a separate 4-px piece of label 2
    out = remove_small_components(seg, (1, 2), min_size=10, voxel_size=(1.0, 1.0))
    assert (out[8:10, 10:12] == 2).all() and not out[20:22, 20:22].any() and (out[5:8, 2:20] == 1).all()
    # label 2 alone: both of its pieces are 4 px
    alone = remove_small_components(seg, 2, min_size=10, voxel_size=(1.0, 1.0))
    assert not (alone == 2).any() and (alone[5:8, 2:20] == 1).all()


def test_sizes_are_physical_so_anisotropic_voxels_change_the_decision():
    seg = np.zeros((10, 20, 20), np.uint8)
    seg[3, 5, 2:12] = 1  # 10 voxels
    iso = remove_small_components(seg, 1, min_size=15.0, voxel_size=(1.0, 1.0, 1.0))
    aniso = remove_small_components(seg, 1, min_size=15.0, voxel_size=(2.0, 1.0, 1.0))  # 20 mm^3
    assert not iso.any() and aniso[3, 5, 2:12].all()
    # 2D in nnU-Net's layout (1, Y, X) with its dummy first spacing 999: the area uses the last two entries
    seg2 = np.zeros((1, 20, 20), np.uint8)
    seg2[0, 4, 2:12] = 1  # 10 px of 0.5 x 0.5 = 2.5 mm^2
    assert remove_small_components(seg2, 1, min_size=3.0, voxel_size=(999.0, 0.5, 0.5)).sum() == 0
    assert remove_small_components(seg2, 1, min_size=2.5, voxel_size=(999.0, 0.5, 0.5)).sum() == 10
    assert spatial_dims((1, 20, 20)) == 2 and spatial_dims((2, 20, 20)) == 3 and spatial_dims((20, 20)) == 2
    assert voxel_measure((1, 20, 20), (999.0, 0.5, 0.5)) == 0.25
    assert voxel_measure((4, 20, 20), (2.0, 0.5, 0.5)) == 0.5


def test_the_input_is_not_modified_and_zero_changes_nothing():
    seg = np.zeros((20, 20), np.uint8)
    seg[3, 3] = 1
    seg[10:14, 2:18] = 1
    before = seg.copy()
    out = remove_small_components(seg, 1, min_size=5, voxel_size=(1.0, 1.0))
    np.testing.assert_array_equal(seg, before)
    assert out is not seg and out[3, 3] == 0
    same = remove_small_components(seg, 1, min_size=0, voxel_size=(1.0, 1.0))
    np.testing.assert_array_equal(same, seg)
    assert same is not seg and same.dtype == seg.dtype


@pytest.mark.parametrize("kwargs, message", [
    ({"labels_or_regions": 0}, "positive integer label"),
    ({"labels_or_regions": (1, -2)}, "region"),
    ({"connectivity": "diagonal"}, "connectivity"),
    ({"voxel_size": (1.0,)}, "voxel_size"),
    ({"voxel_size": (1.0, 0.0)}, "voxel_size"),
    ({"min_size": "big"}, "min_size"),
])
def test_bad_arguments_are_value_errors(kwargs, message):
    args = {"labels_or_regions": 1, "min_size": 5, "voxel_size": (1.0, 1.0), **kwargs}
    with pytest.raises(ValueError, match=message):
        remove_small_components(np.zeros((8, 8), np.uint8), **args)


# ---------------------------------------------------------------------------------------------------------------
# nnU-Net's format


def test_the_pkl_round_trips_and_nnunet_applies_it_as_we_do():
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

    rng = np.random.default_rng(0)
    seg = (rng.random((1, 48, 48)) < 0.15).astype(np.uint8)  # speckles of label 1 ...
    seg[0, 10:14, 2:46] = 1
    seg[0, 30:33, 5:40] = 2  # ... and label 2
    seg[0, (rng.random((48, 48)) < 0.05) & (seg[0] == 0)] = 2
    fns = [remove_small_components, remove_small_components]
    kwargs = [{"labels_or_regions": 1, "min_size": 6.0, "voxel_size": [999.0, 1.0, 1.0], "connectivity": "full",
               "background_label": 0},
              {"labels_or_regions": 2, "min_size": 3.0, "voxel_size": [999.0, 1.0, 1.0], "connectivity": "full",
               "background_label": 0}]
    blob = pickle.dumps((fns, kwargs))
    assert FN_PATH.rsplit(".", 1)[0].encode() in blob  # pickled by reference
    fns2, kwargs2 = pickle.loads(blob)
    assert fns2[0] is remove_small_components and kwargs2 == kwargs
    theirs = apply_postprocessing(seg.copy(), fns2, kwargs2)
    ours = remove_small_components(remove_small_components(seg, **kwargs[0]), **kwargs[1])
    np.testing.assert_array_equal(theirs, ours)
    assert (ours != seg).any()


@pytest.mark.parametrize("shape", [(64, 64), (14, 24, 24)])
def test_the_skeleton_of_kept_components_is_the_restricted_skeleton(shape):
    """What the scan relies on: at full connectivity, the skeleton of a union of whole components is the whole
    mask's skeleton restricted to it (the thinning is local; components touch no common neighbourhood)."""
    rng = np.random.default_rng(1)
    from scipy import ndimage

    mask = ndimage.binary_opening(rng.random(shape) < 0.35)
    mask |= rng.random(shape) < 0.01
    labels, sizes = metrics.component_sizes(mask)
    assert len(sizes) > 5
    for keep_small in (3, 10, 30):
        keep = sizes >= keep_small
        keep[0] = False
        kept = keep[labels]
        np.testing.assert_array_equal(metrics.skeleton(kept), metrics.skeleton(mask) & kept)


# ---------------------------------------------------------------------------------------------------------------
# a fabricated model folder

SIZE = 96
DATASET = "Dataset990_PPTubes"
MODEL = "nnUNetTrainer__nnUNetPlans__2d"
SPECKLES = {4: (40, 5), 9: (40, 25), 16: (40, 45), 36: (40, 65), 64: (60, 5), 144: (60, 25)}  # size: corner


def _vessel() -> np.ndarray:
    ref = np.zeros((SIZE, SIZE), np.uint8)
    ref[10:14, 3:93] = 1  # 360 px: a threshold of 500 removes it
    return ref


def _add_speckles(seg: np.ndarray, sizes, shift: int) -> np.ndarray:
    seg = seg.copy()
    for s in sizes:
        r, c = SPECKLES[s]
        side = round(s ** 0.5)
        seg[r + shift:r + shift + side, c + shift:c + shift + side] = 1
    return seg


def scenario(kind: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, prediction) of case ``i`` of a kind of fabricated cross-validation:

    * ``speckles``: prediction = reference + false speckles of 4..144 px (all removed only at 200);
    * ``true_fragments``: the reference holds a true 40-px fragment (a vessel piece cut by the field of view), the
      prediction has it too, plus speckles of 4..16 px;
    * ``broken``: the prediction breaks a true 44-px piece off the vessel, plus speckles of 4..16 px: removing the
      piece lowers the Betti-0 error but also Dice and clDice;
    * ``broken_only``: the broken piece without speckles.
    """
    shift = i % 3
    ref = _vessel()
    if kind == "speckles":
        return ref, _add_speckles(ref, SPECKLES, shift)
    if kind == "true_fragments":
        ref[30:32, 60:80] = 1
        return ref, _add_speckles(ref, (4, 9, 16), shift)
    pred = ref.copy()
    pred[10:14, 80:82] = 0  # the piece 82..92 (44 px) breaks off
    if kind == "broken":
        return ref, _add_speckles(pred, (4, 9, 16), shift)
    if kind == "broken_only":
        return ref, pred
    raise ValueError(kind)


def fake_model_folder(root: Path, monkeypatch, kind: str = "speckles", folds=(0, 1, 2, 3, 4), per_fold: int = 2,
                      dim: int = 2, splits: bool = True) -> Path:
    """A trained-model folder as nnU-Net leaves it, for the determination: plans.json, dataset.json,
    fold_<f>/validation predictions, and gt_segmentations under ``$nnUNet_preprocessed`` (set for the test)."""
    plans = tiny_plans()
    plans["dataset_name"] = DATASET
    pre = root / "nnUNet_preprocessed" / DATASET
    gt = pre / "gt_segmentations"
    model = root / "nnUNet_results" / DATASET / (MODEL if dim == 2 else MODEL.replace("2d", "3d_fullres"))
    model.mkdir(parents=True)
    spacing = (1.0, 1.0) if dim == 2 else (2.0, 1.0, 1.0)
    plans["original_median_spacing_after_transp"] = [999.0, 1.0, 1.0] if dim == 2 else [2.0, 1.0, 1.0]
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps({**TINY_DATASET_JSON, "numTraining": len(folds) * per_fold}))
    split_list = []
    for f in folds:
        val = []
        for j in range(per_fold):
            i = f * per_fold + j
            case = f"tubes_{i:03d}"
            ref, pred = scenario(kind, i)
            if dim == 3:
                ref, pred = np.stack([ref] * 4), np.stack([pred] * 4)
            write_segmentation(gt, case, ref, spacing)
            write_segmentation(model / f"fold_{f}" / "validation", case, pred, spacing)
            val.append(case)
        split_list.append({"train": [], "val": val})
    if splits:
        (pre / "splits_final.json").write_text(json.dumps(split_list))
    monkeypatch.setenv("nnUNet_preprocessed", str(root / "nnUNet_preprocessed"))
    return model


def _scan_row(doc: dict, label: int = 1, threshold: int | None = None) -> dict:
    lab = next(x for x in doc["labels"] if x["label"] == label)
    if threshold is None:
        return next(r for r in lab["scan"] if r["chosen"])
    return next(r for r in lab["scan"] if r["threshold_voxels"] == threshold)


def test_speckles_only_choose_the_largest_threshold_that_keeps_dice_and_cldice(tmp_path, monkeypatch):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

    from nnunet_tubeconv.postprocessing.determine import GRID_VOXELS, determine_postprocessing

    model = fake_model_folder(tmp_path, monkeypatch, "speckles")
    doc = determine_postprocessing(model)
    out = model / "postprocessing_tubes"
    lab = doc["labels"][0]
    assert lab["label"] == 1 and lab["name"] == "vessel"
    assert [r["threshold_voxels"] for r in lab["scan"]] == list(GRID_VOXELS)
    # 200 removes every speckle (up to 144 px); 500 removes the 360-px vessel and fails Dice
    assert lab["chosen_voxels"] == 200 and lab["postprocessing"]
    assert not _scan_row(doc, threshold=500)["passed"]
    assert _scan_row(doc, threshold=0)["betti0_error"] == 6 and _scan_row(doc)["betti0_error"] == 0
    errors = [r["betti0_error"] for r in lab["scan"][:-1]]
    assert errors == [6, 5, 4, 3, 2, 1, 0]
    assert _scan_row(doc)["dice_change"] > 0 and _scan_row(doc)["cldice_change"] >= 0
    assert doc["num_cases"] == 10 and doc["folds"] == ["0", "1", "2", "3", "4"]
    assert doc["cases"]["3"] == ["tubes_006", "tubes_007"]
    assert doc["voxel_size"] == [999.0, 1.0, 1.0] and doc["voxel_measure"] == 1.0 and doc["dimensions"] == 2
    assert doc["tolerance"] == {"dice": 0.0, "cldice": 0.0} and doc["connectivity"]["foreground"] == 8
    assert len(lab["per_case"]) == 10 and len(lab["per_case"][0]["dice"]) == len(GRID_VOXELS)

    # the files: nnU-Net's pkl and the readable json, in MODEL_FOLDER/postprocessing_tubes
    with open(out / "postprocessing.pkl", "rb") as f:
        fns, kwargs = pickle.load(f)
    assert fns == [remove_small_components]
    assert kwargs == [{"labels_or_regions": 1, "min_size": 200.0, "voxel_size": [999.0, 1.0, 1.0],
                       "connectivity": "full", "background_label": 0}]
    on_disk = json.loads((out / "postprocessing.json").read_text())
    assert on_disk["postprocessing_fns"] == [FN_PATH] and on_disk["labels"][0]["chosen_voxels"] == 200
    assert not (model / "crossval_results_folds_0_1_2_3_4").exists()

    # nnU-Net's own apply_postprocessing on a validation file gives the reference back
    seg, _ = SimpleITKIO().read_seg(str(model / "fold_0" / "validation" / "tubes_000.nii.gz"))
    ref, _ = SimpleITKIO().read_seg(str(tmp_path / "nnUNet_preprocessed" / DATASET / "gt_segmentations"
                                        / "tubes_000.nii.gz"))
    np.testing.assert_array_equal(apply_postprocessing(seg[0], fns, kwargs), ref[0])


def test_the_scan_scores_what_the_postprocessing_function_produces(tmp_path, monkeypatch):
    """Each scan value equals the metrics module's value on the prediction postprocessed by the pkl's function."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_tubeconv.postprocessing.determine import GRID_VOXELS, find_cross_validation, scan_case

    model = fake_model_folder(tmp_path, monkeypatch, "broken", folds=(0,), per_fold=2)
    cv = find_cross_validation(model, folds=[0])
    case = cv.cases[1]
    row = scan_case((case, SimpleITKIO, 1, [], [], GRID_VOXELS, [999.0, 1.0, 1.0], "full"))
    pred, _ = SimpleITKIO().read_seg(str(case.prediction))
    ref = SimpleITKIO().read_seg(str(case.reference))[0][0, 0] == 1
    for i, n in enumerate(GRID_VOXELS):
        pp = remove_small_components(pred[0], 1, n * 1.0, [999.0, 1.0, 1.0])[0] == 1
        assert row["dice"][i] == pytest.approx(metrics.dice_iou(ref, pp)[0], abs=1e-12)
        assert row["cldice"][i] == pytest.approx(metrics.cldice(ref, pp), abs=1e-12)
        assert row["betti0_error"][i] == metrics.betti_errors(ref, pp)[0]


def test_true_fragments_keep_a_smaller_threshold(tmp_path, monkeypatch):
    from nnunet_tubeconv.postprocessing.determine import determine_postprocessing

    model = fake_model_folder(tmp_path, monkeypatch, "true_fragments")
    doc = determine_postprocessing(model, tmp_path / "pp")
    # 20 removes the speckles (<= 16 px); 50 would remove the true 40-px fragment
    assert doc["labels"][0]["chosen_voxels"] == 20
    row50 = _scan_row(doc, threshold=50)
    assert not row50["passed"] and row50["dice_change"] < 0 and row50["betti0_error"] == 1
    assert (tmp_path / "pp" / "postprocessing.pkl").is_file()
    assert not (model / "postprocessing_tubes").exists()


def test_nothing_passes_means_no_postprocessing(tmp_path, monkeypatch):
    from nnunet_tubeconv.postprocessing.determine import determine_postprocessing

    model = fake_model_folder(tmp_path, monkeypatch, "broken_only")
    doc = determine_postprocessing(model)
    lab = doc["labels"][0]
    # removing the broken-off piece (44 px) lowers the Betti-0 error but costs Dice and clDice
    assert lab["chosen_voxels"] == 0 and not lab["postprocessing"]
    assert not _scan_row(doc, threshold=50)["passed"]
    assert _scan_row(doc, threshold=50)["betti0_error"] < _scan_row(doc, threshold=0)["betti0_error"]
    with open(model / "postprocessing_tubes" / "postprocessing.pkl", "rb") as f:
        assert pickle.load(f) == ([], [])


def test_the_tolerance_rule(tmp_path, monkeypatch):
    from nnunet_tubeconv.postprocessing.determine import choose_threshold, determine_postprocessing

    model = fake_model_folder(tmp_path, monkeypatch, "broken")
    strict = determine_postprocessing(model, tmp_path / "strict")
    assert strict["labels"][0]["chosen_voxels"] == 20  # speckles only: the broken piece stays
    drop = _scan_row(strict, threshold=50)
    assert drop["dice_change"] < 0 and drop["cldice_change"] < 0 and drop["betti0_error"] == 0
    loose = determine_postprocessing(model, tmp_path / "loose", tolerance=[f"dice={-drop['dice_change'] + 1e-6}",
                                                                           f"cldice={-drop['cldice_change'] + 1e-6}"])
    assert loose["labels"][0]["chosen_voxels"] == 50 and loose["tolerance"]["dice"] > 0
    half = determine_postprocessing(model, tmp_path / "half", tolerance={"dice": 1.0})  # clDice still guarded
    assert half["labels"][0]["chosen_voxels"] == 20

    # the rule on its own: paired means, NaN pairs left out, ties to the smaller threshold
    per_case = [{"dice": [0.8, 0.81, 0.79], "cldice": [0.7, 0.7, 0.7], "betti0_error": [4, 1, 1],
                 "removed_voxels": [0, 3, 9]},
                {"dice": [float("nan")] * 3, "cldice": [float("nan")] * 3, "betti0_error": [2, 0, 0],
                 "removed_voxels": [0, 5, 5]}]
    rows, chosen = choose_threshold(per_case, (0, 5, 10), {"dice": 0.0, "cldice": 0.0}, 1.0)
    assert chosen == 5 and [r["passed"] for r in rows] == [True, True, False]
    assert rows[1]["dice_paired_cases"] == 1 and rows[1]["betti0_error"] == 0.5
    rows, chosen = choose_threshold(per_case, (0, 5, 10), {"dice": 0.02, "cldice": 0.0}, 1.0)
    assert chosen == 5 and all(r["passed"] for r in rows)  # 10 ties with 5: the smaller wins


def test_3d_anisotropic_model_folder_and_a_subset_of_folds(tmp_path, monkeypatch):
    from nnunet_tubeconv.postprocessing.determine import determine_postprocessing

    model = fake_model_folder(tmp_path, monkeypatch, "true_fragments", folds=(0, 1), dim=3)
    doc = determine_postprocessing(model, folds=["0", "1"])
    lab = doc["labels"][0]
    assert doc["dimensions"] == 3 and doc["voxel_size"] == [2.0, 1.0, 1.0] and doc["voxel_measure"] == 2.0
    assert doc["connectivity"]["foreground"] == 26 and doc["folds"] == ["0", "1"]
    # 4 slices deep: speckles of 16, 36, 64 voxels, the true fragment 160: 100 voxel-equivalents of 2 mm^3
    assert lab["chosen_voxels"] == 100 and lab["chosen_min_size"] == 200.0
    assert doc["postprocessing_kwargs"][0]["min_size"] == 200.0


def test_median_voxel_size_is_put_back_in_the_predictions_axis_order():
    from nnunet_tubeconv.postprocessing.determine import median_voxel_size

    plans = {"original_median_spacing_after_transp": [3.0, 0.7, 0.8], "transpose_forward": [2, 0, 1],
             "transpose_backward": [1, 2, 0]}
    assert median_voxel_size(plans) == [0.7, 0.8, 3.0]
    assert median_voxel_size({"original_median_spacing_after_transp": [999.0, 1.0, 1.0]}) == [999.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# bad input


def test_missing_folds_and_validation_predictions_are_named(tmp_path, monkeypatch):
    import shutil

    from nnunet_tubeconv.postprocessing.determine import PostprocessingError, determine_postprocessing

    model = fake_model_folder(tmp_path, monkeypatch, "speckles", folds=(0, 1, 2), splits=False)
    with pytest.raises(PostprocessingError, match=r"fold_\{3,4\}/validation.*folds with validation predictions: "
                                                  r"0, 1, 2 \(choose them with -f 0 1 2\)"):
        determine_postprocessing(model)
    with pytest.raises(PostprocessingError, match="fold 'all'"):
        determine_postprocessing(model, folds=["all"])
    with pytest.raises(PostprocessingError, match="a fold is an integer"):
        determine_postprocessing(model, folds=["zero"])
    for f in (0, 1, 2):
        shutil.rmtree(model / f"fold_{f}" / "validation")
    with pytest.raises(PostprocessingError, match="no fold has any"):
        determine_postprocessing(model, folds=[0])


def test_incomplete_validation_and_missing_references(tmp_path, monkeypatch):
    from nnunet_tubeconv.postprocessing.determine import PostprocessingError, determine_postprocessing

    model = fake_model_folder(tmp_path, monkeypatch, "speckles", folds=(0, 1))
    (model / "fold_1" / "validation" / "tubes_003.nii.gz").unlink()
    with pytest.raises(PostprocessingError, match="fold_1/validation lacks 1 of the 2 validation cases.*tubes_003"):
        determine_postprocessing(model, folds=[0, 1])
    (tmp_path / "nnUNet_preprocessed" / DATASET / "gt_segmentations" / "tubes_000.nii.gz").unlink()
    with pytest.raises(PostprocessingError, match="no reference .* for 1 validation case.*tubes_000"):
        determine_postprocessing(model, folds=[0])
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(PostprocessingError, match="nnUNet_preprocessed is not set"):
        determine_postprocessing(model, folds=[0])


def test_labels_and_tolerances_must_be_known(tmp_path, monkeypatch):
    from nnunet_tubeconv.postprocessing.determine import PostprocessingError, determine_postprocessing, parse_tolerance

    model = fake_model_folder(tmp_path, monkeypatch, "speckles", folds=(0,))
    with pytest.raises(PostprocessingError, match=r"label 2 is not a foreground label of dataset.json; its labels: "
                                                  r"1 \(vessel\)"):
        determine_postprocessing(model, folds=[0], labels=[2])
    with pytest.raises(PostprocessingError, match="unknown tolerance metric 'hd95'; allowed: dice, cldice"):
        determine_postprocessing(model, folds=[0], tolerance=["hd95=1"])
    with pytest.raises(PostprocessingError, match="METRIC=VALUE"):
        parse_tolerance(["dice"])
    with pytest.raises(PostprocessingError, match="must be a number >= 0"):
        parse_tolerance(["dice=-0.1"])
    assert parse_tolerance(["cldice=0.002"]) == {"dice": 0.0, "cldice": 0.002}
    with pytest.raises(ValueError, match="is not a trained nnU-Net model folder"):
        determine_postprocessing(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# the commands


def test_the_commands_determine_and_apply(tmp_path, monkeypatch, capsys):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_tubeconv.cli import main

    model = fake_model_folder(tmp_path, monkeypatch, "broken")
    assert main(["postprocess", "determine", str(model), "-f", "0", "1", "2", "3", "4",
                 "--tolerance", "dice=0.5", "cldice=0.5", "--labels", "1"]) == 0
    out = capsys.readouterr().out
    assert "label 1 (vessel): remove components < 50 voxels (50 spacing unit^2)" in out
    assert "Betti-0 error 4.00 -> 0.00" in out
    pkl = model / "postprocessing_tubes" / "postprocessing.pkl"
    val = model / "fold_2" / "validation"
    assert main(["postprocess", "apply", "-i", str(val), "-o", str(tmp_path / "pp"), "-pp", str(pkl)]) == 0
    assert "postprocessed 2 files" in capsys.readouterr().out
    for name in ("tubes_004.nii.gz", "tubes_005.nii.gz"):
        seg, props = SimpleITKIO().read_seg(str(tmp_path / "pp" / name))
        raw, raw_props = SimpleITKIO().read_seg(str(val / name))
        with open(pkl, "rb") as f:
            fns, kwargs = pickle.load(f)
        np.testing.assert_array_equal(seg[0], fns[0](raw[0], **kwargs[0]))
        assert list(props["spacing"]) == list(raw_props["spacing"])

    # --case-spacing: the same here (every case has the median spacing)
    assert main(["postprocess", "apply", "-i", str(val), "-o", str(tmp_path / "pp2"), "-pp", str(pkl),
                 "--case-spacing"]) == 0
    a = SimpleITKIO().read_seg(str(tmp_path / "pp" / "tubes_004.nii.gz"))[0]
    b = SimpleITKIO().read_seg(str(tmp_path / "pp2" / "tubes_004.nii.gz"))[0]
    np.testing.assert_array_equal(a, b)


def test_case_spacing_measures_each_case_in_its_own_units(tmp_path):
    from nnunet_tubeconv.postprocessing.apply import apply_to_folder
    from nnunet_tubeconv.postprocessing.determine import write_postprocessing

    seg = np.zeros((20, 20), np.uint8)
    seg[2:4, 2:7] = 1  # 10 px
    write_segmentation(tmp_path / "pred", "fine", seg, (0.5, 0.5))  # 2.5 mm^2
    kwargs = {"labels_or_regions": 1, "min_size": 5.0, "voxel_size": [999.0, 1.0, 1.0], "connectivity": "full",
              "background_label": 0}
    write_postprocessing(tmp_path / "pp", [remove_small_components], [kwargs], {})
    pkl = tmp_path / "pp" / "postprocessing.pkl"
    apply_to_folder(tmp_path / "pred", tmp_path / "median", pkl)
    apply_to_folder(tmp_path / "pred", tmp_path / "case", pkl, case_spacing=True)
    import SimpleITK as sitk

    median = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "median" / "fine.nii.gz")))
    case = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case" / "fine.nii.gz")))
    assert median.sum() == 10 and case.sum() == 0  # 10 voxels of the median's 1 mm^2 stay; 2.5 mm^2 go


def test_command_errors_are_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    from nnunet_tubeconv.cli import main

    model = fake_model_folder(tmp_path, monkeypatch, "speckles", folds=(0,))
    cases = [
        (["determine", str(model)], "postprocess determine: error: no validation predictions"),
        (["determine", str(model), "-f", "0", "--tolerance", "nsd=0.1"], "unknown tolerance metric 'nsd'"),
        (["determine", str(model), "-f", "0", "--labels", "3"], "label 3 is not a foreground label"),
        (["apply", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "-pp", "x.pkl"],
         "postprocess apply: error: prediction folder"),
        (["apply", "-i", str(model / "fold_0" / "validation"), "-o", str(tmp_path / "o"), "-pp",
          str(model / "dataset.json")], "is not a postprocessing.pkl"),
        (["apply", "-i", str(model / "fold_0" / "validation"), "-o", str(tmp_path / "o"), "-pp",
          str(tmp_path / "missing.pkl")], "no postprocessing file"),
    ]
    for args, message in cases:
        assert main(["postprocess", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(([len], [{}, {}])))
    assert main(["postprocess", "apply", "-i", str(model / "fold_0" / "validation"), "-o", str(tmp_path / "o"),
                 "-pp", str(bad)]) == 2
    assert "not nnU-Net's postprocessing format" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# where users predict: the bundle and the ONNX metadata


def test_the_bundle_carries_the_model_folders_postprocessing(tmp_path, monkeypatch):
    from nnunet_tubeconv.deploy import bundle_predict
    from nnunet_tubeconv.deploy.onnx_export import postprocessing_metadata
    from nnunet_tubeconv.deploy.package import copy_postprocessing
    from nnunet_tubeconv.postprocessing.determine import determine_postprocessing

    model = fake_model_folder(tmp_path, monkeypatch, "speckles", folds=(0,))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert copy_postprocessing(model, bundle) is None and postprocessing_metadata(model) is None
    assert bundle_predict.postprocessing_steps(bundle) == ([], [])

    determine_postprocessing(model, folds=[0])
    info = copy_postprocessing(model, bundle)
    assert info["file"] == "postprocessing.pkl" and info["source"].endswith("postprocessing_tubes/postprocessing.pkl")
    assert info["steps"] == [{"function": FN_PATH, "kwargs": {"labels_or_regions": 1, "min_size": 200.0,
                                                              "voxel_size": [999.0, 1.0, 1.0], "connectivity": "full",
                                                              "background_label": 0}}]
    assert (bundle / "postprocessing.json").is_file()
    fns, kwargs = bundle_predict.postprocessing_steps(bundle)
    assert fns == [remove_small_components] and kwargs[0]["min_size"] == 200.0
    meta = postprocessing_metadata(model)
    assert meta["file"] == "postprocessing_tubes/postprocessing.pkl" and meta["steps"] == info["steps"]
    json.dumps(meta)  # goes into the ONNX metadata as JSON

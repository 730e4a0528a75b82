"""Overlap and surface-distance metrics on hand-built masks whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_tubeconv.evaluation.metrics import (
    MetricSettings,
    dice_iou,
    evaluate_masks,
    hausdorff_percentile,
    image_diagonal,
    normalised_surface_distance,
    surface,
    surface_distances,
)


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    """Surface by definition: a voxel with a face-neighbour outside the mask or outside the image."""
    out = np.zeros_like(mask)
    for idx in np.argwhere(mask):
        for axis in range(mask.ndim):
            for step in (-1, 1):
                n = idx.copy()
                n[axis] += step
                if n[axis] < 0 or n[axis] >= mask.shape[axis] or not mask[tuple(n)]:
                    out[tuple(idx)] = True
    return out


def _brute_directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    pa = np.argwhere(_brute_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(_brute_surface(b)) * np.asarray(spacing)
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(axis=1)


def test_dice_iou_counts():
    ref = np.zeros((4, 5), bool)
    ref[0, :] = ref[1, :] = True  # 10 voxels
    pred = np.zeros_like(ref)
    pred[1, :4] = True
    pred[2, :2] = True  # 6 voxels, 4 overlapping: tp 4, fp 2, fn 6
    dice, iou = dice_iou(ref, pred)
    assert dice == pytest.approx(8 / 16)
    assert iou == pytest.approx(4 / 12)


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 6)])
def test_dice_iou_empty_cases(shape):
    empty = np.zeros(shape, bool)
    some = empty.copy()
    some[(1,) * len(shape)] = True
    assert all(math.isnan(v) for v in dice_iou(empty, empty))  # nnU-Net: NaN when both are empty
    assert dice_iou(empty, some) == (0.0, 0.0)
    assert dice_iou(some, empty) == (0.0, 0.0)
    assert dice_iou(some, some) == (1.0, 1.0)


def test_surface_matches_definition_and_counts_image_border():
    rng = np.random.default_rng(0)
    mask = rng.random((7, 8, 6)) > 0.4
    np.testing.assert_array_equal(surface(mask), _brute_surface(mask))
    full = np.ones((3, 3), bool)
    assert surface(full).sum() == 8  # every voxel but the centre touches the image border


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 3.0), (2.0, 0.7)])
def test_parallel_lines_distance_is_known(spacing):
    ref = np.zeros((10, 20), bool)
    pred = np.zeros_like(ref)
    ref[2, :] = True
    pred[5, :] = True  # every surface voxel is exactly 3 rows away
    expected = 3 * spacing[0]
    assert hausdorff_percentile(ref, pred, spacing) == pytest.approx(expected)
    assert normalised_surface_distance(ref, pred, spacing, tolerance=expected - 1e-6) == 0.0
    assert normalised_surface_distance(ref, pred, spacing, tolerance=expected) == 1.0


def test_single_voxels_anisotropic():
    ref = np.zeros((5, 5, 9), bool)
    pred = np.zeros_like(ref)
    ref[2, 2, 1] = True
    pred[2, 2, 6] = True
    assert hausdorff_percentile(ref, pred, (3.0, 3.0, 0.5)) == pytest.approx(2.5)
    assert hausdorff_percentile(ref, pred, (0.5, 0.5, 2.0)) == pytest.approx(10.0)
    assert hausdorff_percentile(ref, ref, (0.5, 0.5, 2.0)) == 0.0


@pytest.mark.parametrize("method", ["kdtree", "edt"])
@pytest.mark.parametrize("shape,spacing", [((9, 11), (0.6, 1.3)), ((6, 7, 8), (2.0, 0.5, 1.0))])
def test_hd_and_nsd_agree_with_brute_force(method, shape, spacing):
    rng = np.random.default_rng(1)
    ref = rng.random(shape) > 0.7
    pred = rng.random(shape) > 0.6
    d_ref, d_pred = surface_distances(ref, pred, spacing, method=method)
    np.testing.assert_allclose(np.sort(d_ref), np.sort(_brute_directed(ref, pred, spacing)), atol=1e-9)
    np.testing.assert_allclose(np.sort(d_pred), np.sort(_brute_directed(pred, ref, spacing)), atol=1e-9)
    b_ref, b_pred = _brute_directed(ref, pred, spacing), _brute_directed(pred, ref, spacing)
    hd = max(np.percentile(b_ref, 95), np.percentile(b_pred, 95))
    assert hausdorff_percentile(ref, pred, spacing, method=method) == pytest.approx(hd)
    tol = 1.0
    nsd = ((b_ref <= tol).sum() + (b_pred <= tol).sum()) / (b_ref.size + b_pred.size)
    assert normalised_surface_distance(ref, pred, spacing, tol, method=method) == pytest.approx(nsd)


def test_kdtree_and_edt_give_the_same_distances():
    rng = np.random.default_rng(2)
    ref = rng.random((20, 18, 9)) > 0.8
    pred = rng.random((20, 18, 9)) > 0.85
    for a, b in zip(surface_distances(ref, pred, (0.7, 0.7, 2.5), "kdtree"),
                    surface_distances(ref, pred, (0.7, 0.7, 2.5), "edt")):
        np.testing.assert_allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("shape,spacing", [((10, 20), (1.0, 2.0)), ((4, 5, 6), (1.0, 1.0, 3.0))])
def test_distance_empty_cases(shape, spacing):
    empty = np.zeros(shape, bool)
    some = empty.copy()
    some[(1,) * len(shape)] = True
    assert math.isnan(hausdorff_percentile(empty, empty, spacing))
    assert math.isnan(normalised_surface_distance(empty, empty, spacing, 1.0))
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))
    assert image_diagonal(shape, spacing) == pytest.approx(diag)
    assert hausdorff_percentile(empty, some, spacing) == pytest.approx(diag)
    assert hausdorff_percentile(some, empty, spacing) == pytest.approx(diag)
    assert normalised_surface_distance(empty, some, spacing, 1.0) == 0.0
    assert normalised_surface_distance(some, empty, spacing, 1.0) == 0.0


def test_bad_arguments_raise_value_error():
    a = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match="shapes differ"):
        dice_iou(a, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_percentile(a, a, (1.0,))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_percentile(a, a, (1.0, -1.0))
    with pytest.raises(ValueError, match="2D or 3D"):
        dice_iou(np.zeros(4, bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match="connectivity"):
        MetricSettings(connectivity="diagonal")
    with pytest.raises(ValueError, match="distance_method"):
        MetricSettings(distance_method="brute")
    with pytest.raises(ValueError, match="crop_margin"):
        MetricSettings(crop_margin=0)


def _tube_pair_3d():
    ref = np.zeros((40, 30, 24), bool)
    ref[5:35, 12:16, 10:13] = True
    ref[20, 5:25, 5:20] = True  # a plate crossing the tube: a cavity-free but non-trivial shape
    pred = ref.copy()
    pred[18:21, 12:16, 10:13] = False  # cut the tube
    pred[30:33, 3:6, 3:6] = True  # a false-positive blob
    return ref, pred


def test_evaluate_masks_is_invariant_to_crop_and_padding():
    ref, pred = _tube_pair_3d()
    spacing = (0.8, 0.8, 1.5)
    tight = evaluate_masks(ref, pred, spacing, MetricSettings(crop_margin=1))
    wide = evaluate_masks(ref, pred, spacing, MetricSettings(crop_margin=100))
    padded = evaluate_masks(np.pad(ref, 7), np.pad(pred, 7), spacing, MetricSettings(crop_margin=1))
    for key, value in tight.items():
        assert wide[key] == pytest.approx(value, nan_ok=True), key
        assert padded[key] == pytest.approx(value, nan_ok=True), key
    assert tight["betti0_error"] == 2  # the cut adds one component, the blob another


def test_evaluate_masks_single_voxel_and_identity():
    for shape, spacing in (((7, 9), (1.0, 0.5)), ((5, 6, 7), (1.0, 1.0, 2.0))):
        one = np.zeros(shape, bool)
        one[(2,) * len(shape)] = True
        out = evaluate_masks(one, one, spacing)
        assert (out["dice"], out["iou"], out["hd95"], out["nsd"], out["cldice"]) == (1.0, 1.0, 0.0, 1.0, 1.0)
        assert out["betti0_error"] == out["betti1_error"] == 0
        assert out["betti2_error"] == (None if len(shape) == 2 else 0)
        assert out["n_ref"] == out["n_pred"] == 1


def test_evaluate_masks_empty_cases():
    shape, spacing = (6, 8, 5), (1.0, 2.0, 1.0)
    empty = np.zeros(shape, bool)
    some = empty.copy()
    some[2:4, 2:4, 2] = True
    both = evaluate_masks(empty, empty, spacing)
    for key in ("dice", "iou", "hd95", "nsd", "cldice"):
        assert math.isnan(both[key]), key
    assert (both["betti0_error"], both["betti1_error"], both["betti2_error"]) == (0, 0, 0)
    for ref, pred in ((empty, some), (some, empty)):
        one = evaluate_masks(ref, pred, spacing)
        assert (one["dice"], one["iou"], one["nsd"], one["cldice"]) == (0.0, 0.0, 0.0, 0.0)
        assert one["hd95"] == pytest.approx(image_diagonal(shape, spacing))
        assert one["betti0_error"] == 1


def test_hd95_uses_settings_percentile_and_tolerance():
    ref, pred = _tube_pair_3d()
    spacing = (1.0, 1.0, 1.0)
    d_ref, d_pred = surface_distances(ref, pred, spacing)
    out = evaluate_masks(ref, pred, spacing, MetricSettings(hd_percentile=100.0, nsd_tolerance_mm=0.0))
    assert out["hd95"] == pytest.approx(max(d_ref.max(), d_pred.max()))
    assert out["nsd"] == pytest.approx(((d_ref == 0).sum() + (d_pred == 0).sum()) / (d_ref.size + d_pred.size))


def test_settings_json_states_connectivity():
    js = MetricSettings(connectivity="face", nsd_tolerance_mm=2.0).to_json()
    assert js["nsd_tolerance_mm"] == 2.0
    assert js["connectivity"]["3d"] == {"foreground": 6, "background": 26}
    assert js["connectivity"]["2d"] == {"foreground": 4, "background": 8}
    assert "empty" in js and "hd95" in js["empty"]


def test_bench_script_runs_on_a_small_tree(capsys):
    from nnunet_tubeconv.evaluation.bench import main as bench_main

    assert bench_main(["--shape", "64", "64", "24", "--depth", "4", "--root-radius", "3"]) == 0
    out = capsys.readouterr().out
    for step in ("surface_distances", "cldice", "betti", "total"):
        assert step in out

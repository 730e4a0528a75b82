"""Recall of the reference centreline by calibre: known answers in 2D and 3D (tubes of known radius, a thin branch
missing from the prediction), spacing-aware radii, the band edges as settings, crop invariance inside
evaluate_masks, and the settings' validation."""

import math

import numpy as np
import pytest

from nnunet_tubeconv.evaluation.metrics import MetricSettings, calibre_recall, evaluate_masks


def _three_tubes_2d():
    """Three horizontal vessels across the whole image: 1 px wide (radius 1: thin), 3 px (centre radius 2:
    medium) and 9 px (centre radius 5: thick)."""
    ref = np.zeros((40, 30), bool)
    thin, medium, thick = (slice(5, 6),), (slice(12, 15),), (slice(22, 31),)
    for rows in (thin, medium, thick):
        ref[rows[0], :] = True
    return ref, thin[0], medium[0], thick[0]


def test_full_prediction_recalls_every_band():
    ref, *_ = _three_tubes_2d()
    assert calibre_recall(ref, ref, (1.0, 1.0)) == {"recall_thin": 1.0, "recall_medium": 1.0, "recall_thick": 1.0}
    assert calibre_recall(ref, np.zeros_like(ref), (1.0, 1.0)) == {"recall_thin": 0.0, "recall_medium": 0.0,
                                                                  "recall_thick": 0.0}


def test_a_missing_thin_branch_shows_in_the_thin_band_only():
    ref, thin, _medium, thick = _three_tubes_2d()
    pred = ref.copy()
    pred[thin, :] = False
    out = calibre_recall(ref, pred, (1.0, 1.0))
    # Zhang-Suen leaves one end voxel of radius 1 on the 3-px vessel: 1 of the 31 thin centreline voxels survives
    assert out["recall_thin"] == pytest.approx(0.0, abs=0.05)
    assert out["recall_medium"] == 1.0 and out["recall_thick"] == 1.0
    pred = ref.copy()
    pred[thick, 15:] = False  # the right half of the thick vessel
    out = calibre_recall(ref, pred, (1.0, 1.0))
    assert out["recall_thin"] == 1.0 and out["recall_medium"] == 1.0
    assert out["recall_thick"] == pytest.approx(0.5, abs=0.05)


def test_a_band_without_centreline_is_nan_and_edges_move_vessels_between_bands():
    ref, thin, medium, _thick = _three_tubes_2d()
    only_thin = np.zeros_like(ref)
    only_thin[thin, :] = True
    out = calibre_recall(only_thin, only_thin, (1.0, 1.0))
    assert out["recall_thin"] == 1.0 and math.isnan(out["recall_medium"]) and math.isnan(out["recall_thick"])
    pred = ref.copy()
    pred[medium, :] = False
    # with edges (2.5, 6) the 3-px vessel (radius 2) is thin and the 9-px one (radius 5) medium
    out = calibre_recall(ref, pred, (1.0, 1.0), edges=(2.5, 6.0))
    assert out["recall_thin"] == pytest.approx(0.5, abs=0.05) and out["recall_medium"] == 1.0
    assert math.isnan(out["recall_thick"])


def test_radius_is_physical_spacing_halves_it():
    ref, _thin, medium, _thick = _three_tubes_2d()
    pred = ref.copy()
    pred[medium, :] = False
    # at spacing 0.5 the 3-px vessel has radius 1.0 (thin) and the 9-px one 2.5 (medium)
    out = calibre_recall(ref, pred, (0.5, 0.5))
    assert out["recall_thin"] == pytest.approx(0.5, abs=0.05) and out["recall_medium"] == 1.0
    assert math.isnan(out["recall_thick"])


def test_3d_tubes_of_known_radius():
    ref = np.zeros((12, 14, 40), bool)
    ref[3, 3, :] = True           # 1 x 1 cross-section: radius 1, thin
    ref[6:11, 7:12, :] = True     # 5 x 5 cross-section: centre radius 3, thick
    pred = ref.copy()
    pred[3, 3, :] = False
    out = calibre_recall(ref, pred, (1.0, 1.0, 1.0))
    assert out["recall_thin"] == 0.0 and out["recall_thick"] == 1.0
    # anisotropic spacing: with z (axis 0) steps of 4, the 5 x 5 tube is 20 wide in z, 5 in y: radius 3 -> thick
    out = calibre_recall(ref, ref, (4.0, 1.0, 1.0))
    assert out["recall_thin"] == 1.0 and out["recall_thick"] == 1.0


def test_evaluate_masks_reports_the_bands_and_is_crop_invariant():
    ref, thin, *_ = _three_tubes_2d()
    pred = ref.copy()
    pred[thin, :10] = False
    small = evaluate_masks(ref[:, 5:25], pred[:, 5:25], (1.0, 1.0))
    padded = np.zeros((80, 20), bool)
    padded_pred = padded.copy()
    padded[20:60] = ref[:, 5:25]
    padded_pred[20:60] = pred[:, 5:25]
    big = evaluate_masks(padded, padded_pred, (1.0, 1.0))
    for k in ("recall_thin", "recall_medium", "recall_thick"):
        assert small[k] == pytest.approx(big[k])
    assert 0 < small["recall_thin"] < 1 and small["recall_thick"] == 1.0


@pytest.mark.parametrize("edges", [(3.0, 1.5), (0.0, 2.0), (1.0,), (1.0, float("inf"))])
def test_bad_calibre_edges_are_refused(edges):
    with pytest.raises(ValueError, match="calibre_edges"):
        MetricSettings(calibre_edges=edges)


def test_settings_record_the_edges():
    d = MetricSettings(calibre_edges=[2, 4]).to_json()
    assert d["calibre_edges"] == (2.0, 4.0) and "thin < 2" in d["calibre"]

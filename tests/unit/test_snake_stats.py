"""snake-stats geometry on constructed cases with known answers: fixed swing fields on straight, diagonal and curved
tubes, 2D and 3D, with the sample points computed by DSConv itself (``snake_coordinates``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from support.networks import with_snakes
from torch import nn

from nnunet_tubeconv.blocks.dsconv import DSConv
from nnunet_tubeconv.deploy.snake_stats import (
    format_stats,
    layer_case_stats,
    pool_label,
    summarise,
    vessel_directions,
)

torch.set_num_threads(1)
K = 9
C = K // 2


def _coords(shape, delta, axis=0, extend_scope=1.0):
    """DSConv's own sample points ``(K, d, *S)`` for a fixed swing field ``delta`` ``(n_swing * (K - 1), *S)``."""
    dim = len(shape)
    m = DSConv(nn.Conv2d if dim == 2 else nn.Conv3d, 1, 1, kernel_size=K, axis=axis, extend_scope=extend_scope)
    d = torch.as_tensor(delta, dtype=torch.float32)[None]
    m.swing = lambda x: d  # the fixed field replaces the learnt branch
    return m.snake_coordinates(torch.zeros(1, 1, *shape))[0].numpy(), m


def _tilt_field(shape, n_swing, value):
    """Every ``delta_{+i} = value``, ``delta_{-i} = -value``: a straight oblique line of slope ``value``."""
    per_axis = np.concatenate([np.full(C, -value), np.full(C, value)])
    field = np.tile(per_axis, n_swing).astype(np.float32)
    return np.broadcast_to(field.reshape(-1, *([1] * len(shape))), (n_swing * (K - 1), *shape)).copy()


def test_pool_label_is_a_ceil_max_pool():
    lab = np.zeros((9, 8), dtype=bool)
    lab[8, 0] = True  # the last, partial row of cells
    lab[1, 5] = True
    out = pool_label(lab, [4, 4])
    assert out.shape == (3, 2)
    assert out.tolist() == [[False, True], [False, False], [True, False]]
    with pytest.raises(ValueError, match="axes"):
        pool_label(lab, [2])


@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 90.0])
def test_structure_tensor_direction_of_a_straight_band(angle):
    rows, cols = np.mgrid[0:64, 0:64]
    t = np.deg2rad(angle)
    v = np.array([np.cos(t), np.sin(t)])  # (row, col) direction of the band
    dist = np.abs((rows - 32) * v[1] - (cols - 32) * v[0])
    lab = dist <= 1.5
    got = vessel_directions(lab, np.array([[32, 32], [24, 24]]))
    assert abs(float(got[0] @ v)) > 0.99
    assert np.linalg.norm(got, axis=1) == pytest.approx([1.0, 1.0])


def test_straight_tube_straight_kernel_and_a_constant_tilt():
    shape = (40, 40)
    lab = np.zeros(shape, dtype=bool)
    lab[:, 19:22] = True  # a vertical tube, 3 wide, along axis 0
    zero, _ = _coords(shape, np.zeros((K - 1, *shape), np.float32))
    s = layer_case_stats(zero, np.zeros((K - 1, *shape)), 0, (1,), 1.0, lab)
    # the straight kernel along the tube stays on it (clamped at the ends): both adherences are 1
    assert s["adherence_snake"] == pytest.approx(1.0) and s["adherence_straight"] == pytest.approx(1.0)
    assert s["direction_snake"] == pytest.approx(1.0, abs=1e-6) and s["direction_straight"] == pytest.approx(1.0)
    assert s["saturated"] == 0 and s["mean_step"] == 0 and s["tilt"] == 0 and s["constant_tilt"] == 0
    assert s["vessel_positions"] == 3 * 40 and s["positions"] == 1600

    delta = _tilt_field(shape, 1, 0.9)
    tilted, _ = _coords(shape, delta)
    s = layer_case_stats(tilted, delta, 0, (1,), 1.0, lab)
    assert s["tilt"] == pytest.approx(1.0) and s["constant_tilt"] == pytest.approx(1.0)
    assert s["mean_step"] == pytest.approx(0.9, abs=1e-6) and s["saturated"] == 0
    # points at +-j move 0.9 j sideways: from the tube's middle only j = +-1 (0.9) stays inside 1.5 voxels
    assert s["adherence_snake"] < 0.45 < s["adherence_straight"] == pytest.approx(1.0)
    # chord direction (1, 0.9) / |.| against the tube's (1, 0)
    assert s["direction_snake"] == pytest.approx(1 / np.hypot(1, 0.9), abs=1e-3)

    # near-vessel: the tube dilated by one voxel (columns 18..22, linearly interpolated between voxels): points
    # 0.9 j sideways from columns 19..21
    def dilated(x):
        return float(np.clip(min(x - 17, 23 - x), 0, 1))

    expected = np.mean([[dilated(c + 0.9 * j) for j in (-4, -3, -2, -1, 1, 2, 3, 4)] for c in (19, 20, 21)])
    assert s["near_vessel_straight"] == pytest.approx(1.0)
    assert s["adherence_snake"] < s["near_vessel_snake"] == pytest.approx(expected, abs=1e-6)

    mirrored = -delta  # tilted to the other side everywhere: as constant
    assert layer_case_stats(_coords(shape, mirrored)[0], mirrored, 0, (1,))["constant_tilt"] == pytest.approx(1.0)
    half = delta.copy()
    half[:, :, 20:] *= -1  # two opposite tilts, half of the positions each
    s = layer_case_stats(_coords(shape, half)[0], half, 0, (1,))
    assert s["tilt"] == pytest.approx(1.0) and s["constant_tilt"] == pytest.approx(0.5)


def test_near_vessel_counts_points_beside_a_thin_vessel_that_adherence_misses():
    # a one-voxel tube; a snake of slope 0.5 puts its points 0.5 j sideways: 0.5 (half on the tube by
    # interpolation), 1 (beside it), 1.5, 2 (off); the dilated tube covers columns c-1..c+1
    shape = (40, 40)
    lab = np.zeros(shape, dtype=bool)
    lab[:, 20] = True
    delta = _tilt_field(shape, 1, 0.5)
    s = layer_case_stats(_coords(shape, delta)[0], delta, 0, (1,), 1.0, lab)
    assert s["adherence_snake"] == pytest.approx((0.5 + 0 + 0 + 0) / 4)
    assert s["near_vessel_snake"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert s["adherence_straight"] == pytest.approx(1.0) and s["near_vessel_straight"] == pytest.approx(1.0)
    per_case = {"a": s, "b": s}
    assert summarise(per_case)["near_vessel_diff"] == pytest.approx(0.625 - 1.0)


def test_saturation_counts_swing_values_beyond_095_and_respects_valid():
    shape = (10, 10)
    delta = np.zeros((K - 1, *shape), np.float32)
    delta[0] = 0.96  # one channel of eight saturated everywhere
    delta[1, :5] = -0.99  # another on half of the rows
    valid = np.zeros(shape, dtype=bool)
    valid[:5] = True  # count the first half only
    coords, _ = _coords(shape, delta)
    s = layer_case_stats(coords, delta, 0, (1,), valid=valid)
    assert s["saturated"] == pytest.approx(2 / 8)
    assert s["positions"] == 50
    assert layer_case_stats(coords, delta, 0, (1,))["saturated"] == pytest.approx(1.5 / 8)


def test_diagonal_tube_a_following_snake_beats_the_straight_kernel():
    shape = (48, 48)
    rows, cols = np.mgrid[0:48, 0:48]
    lab = np.abs(rows - cols) <= 1  # a 45-degree tube
    delta = _tilt_field(shape, 1, 0.999)  # slope ~1: the snake lies along the diagonal
    coords, _ = _coords(shape, delta)
    s = layer_case_stats(coords, delta, 0, (1,), 1.0, lab)
    assert s["adherence_snake"] > 0.95
    assert s["adherence_straight"] < 0.5
    assert s["direction_snake"] > 0.99
    assert s["direction_straight"] == pytest.approx(np.sqrt(0.5), abs=0.02)
    assert s["saturated"] == pytest.approx(1.0)  # 0.999 > 0.95: this field is a saturated one


def test_curved_tube_a_snake_that_follows_the_curve():
    shape = (64, 64)

    def curve(r):
        return 20 + 0.012 * (np.asarray(r, dtype=np.float64) - 32) ** 2  # slope at most 0.77 per row

    rows, cols = np.mgrid[0:64, 0:64]
    lab = np.abs(cols - curve(rows)) <= 1.5
    # swing of point +-i: the curve's sideways step between rows r +- (i - 1) and r +- i
    r = np.arange(64, dtype=np.float64)[:, None]
    chans = [curve(r - i) - curve(r - i + 1) for i in range(C, 0, -1)] + [curve(r + i) - curve(r + i - 1)
                                                                        for i in range(1, C + 1)]
    delta = np.stack([np.broadcast_to(ch, shape) for ch in chans]).astype(np.float32)
    coords, _ = _coords(shape, delta)
    # the points of a centre on the curve lie on the curve (the cumulative sum telescopes)
    r0 = 40
    c0 = int(np.rint(curve(r0)))
    pts = coords[:, :, r0, c0]
    np.testing.assert_allclose(pts[:, 1] - (c0 - curve(r0)), curve(r0 + np.arange(-C, C + 1)), atol=1e-4)
    s = layer_case_stats(coords, delta, 0, (1,), 1.0, lab)
    # below 1: centres at the band's edge keep their offset (interpolation reaches outside), the ends clamp
    assert s["adherence_snake"] > 0.85
    assert s["adherence_snake"] - s["adherence_straight"] > 0.15
    assert s["direction_snake"] > s["direction_straight"]
    assert s["constant_tilt"] < 0.5  # the tilt changes side along the curve


def test_3d_two_swing_axes():
    shape = (24, 24, 24)
    z, y, x = np.mgrid[0:24, 0:24, 0:24]
    straight_tube = (np.abs(y - 12) <= 1) & (np.abs(x - 12) <= 1)  # along axis 0
    diag_tube = (np.abs(y - z) <= 1) & (np.abs(x - 12) <= 1)  # 45 degrees in the (0, 1) plane
    zero = np.zeros((2 * (K - 1), *shape), np.float32)
    coords0, m = _coords(shape, zero)
    assert m.swing_axes == (1, 2)
    s = layer_case_stats(coords0, zero, 0, (1, 2), 1.0, straight_tube)
    assert s["adherence_snake"] == pytest.approx(1.0) and s["direction_snake"] == pytest.approx(1.0, abs=1e-6)

    follow = zero.copy()
    follow[: K - 1] = _tilt_field(shape, 1, 0.999)  # swing along axis 1 only
    coords, _ = _coords(shape, follow)
    s = layer_case_stats(coords, follow, 0, (1, 2), 1.0, diag_tube)
    assert s["adherence_snake"] > 0.95 and s["adherence_straight"] < 0.5
    assert s["direction_snake"] > 0.99 and s["direction_straight"] == pytest.approx(np.sqrt(0.5), abs=0.03)
    assert s["constant_tilt"] == pytest.approx(1.0)  # along axis 1; axis 2 does not tilt
    s_wrong = layer_case_stats(*_swap_axes(follow, shape), 0, (1, 2), 1.0, diag_tube)
    assert s_wrong["adherence_snake"] < s["adherence_snake"] - 0.3  # swinging along axis 2 leaves the tube


def _swap_axes(delta, shape):
    swapped = np.concatenate([delta[K - 1:], delta[: K - 1]])
    return _coords(shape, swapped)[0], swapped


def test_no_vessel_and_bad_shapes():
    shape = (8, 8)
    coords, _ = _coords(shape, np.zeros((K - 1, *shape), np.float32))
    s = layer_case_stats(coords, None, 0, (1,), 1.0, np.zeros(shape, bool))
    assert s["vessel_positions"] == 0 and s["adherence_snake"] is None and s["saturated"] == 0
    with pytest.raises(ValueError, match="label has shape"):
        layer_case_stats(coords, None, 0, (1,), 1.0, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="valid has shape"):
        layer_case_stats(coords, None, 0, (1,), valid=np.zeros((4, 4), bool))


def test_summarise_paired_difference_and_ci():
    per_case = {f"c{i}": {"saturated": 0.1 * i, "adherence_snake": 0.5 + 0.01 * i, "adherence_straight": 0.45,
                          "direction_snake": 0.7, "direction_straight": 0.6} for i in range(5)}
    s = summarise(per_case)
    assert s["cases"] == 5 and s["saturated"] == pytest.approx(0.2)
    assert s["adherence_diff"] == pytest.approx(0.07)
    lo, hi = s["adherence_diff_ci"]
    assert 0.05 <= lo <= 0.07 <= hi <= 0.09
    assert s["direction_diff"] == pytest.approx(0.1) and s["direction_diff_ci"] == pytest.approx([0.1, 0.1])
    one = summarise({"a": per_case["c0"]})
    assert one["adherence_diff_ci"] is None  # no CI from a single case
    text = format_stats({"labels": True, "layers": [{"name": "enc.snake", "stage": 2, "morph_axis": 0,
                                                      "summary": s}]})
    assert "enc.snake" in text and "+7.0% [+5." in text and "+0.100 [+0.100, +0.100]" in text


# ---------------------------------------------------------------------------------------------------------------
# the whole command on networks with DSConv layers put in by hand (no training), through nnU-Net's preprocessing


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_snake_stats_on_a_model_with_labels(tmp_path, configuration):
    from nnunet_tubeconv.data.synthetic import write_synthetic_dataset
    from nnunet_tubeconv.deploy.snake_stats import snake_stats

    dim = 2 if configuration == "2d" else 3
    shape = (48, 40) if dim == 2 else (20, 36, 32)
    raw = write_synthetic_dataset(tmp_path / "raw", 990, dim, 2, shape=shape, name="Stats")
    placements = [("encoder.stages.0.0", 0), ("decoder.stages.1", 1)] if dim == 2 else [("encoder.stages.0.0", 2)]
    model = with_snakes(configuration, placements)
    model.folder = SimpleNamespace(path=tmp_path)
    stats = snake_stats(model, [str(raw / "imagesTr")], str(raw / "labelsTr"))
    assert stats["cases"] == ["tubes_000", "tubes_001"] and stats["labels"] is True
    assert len(stats["layers"]) == len(placements)
    for layer in stats["layers"]:
        s = layer["summary"]
        assert s["cases"] == 2
        assert 0 <= s["saturated"] <= 1 and s["mean_step"] > 0  # random swing: the snakes bend
        assert s["vessel_positions"] > 0 and 0 <= s["adherence_straight"] <= 1
        assert s["adherence_diff_ci"] is not None and s["adherence_diff_ci"][0] <= s["adherence_diff"]
        for case in stats["cases"]:
            assert set(layer["per_case"][case]) >= {"saturated", "constant_tilt", "adherence_snake",
                                                     "direction_straight"}
    with pytest.raises(ValueError, match=r"case\(s\) \['nope'\] not found"):
        snake_stats(model, [str(raw / "imagesTr")], None, ["nope"])
    with pytest.raises(ValueError, match="reference label for case tubes_000 not found"):
        snake_stats(model, [str(raw / "imagesTr")], str(tmp_path), ["tubes_000"])
    no_labels = snake_stats(model, [str(raw / "imagesTr" / "tubes_001_0000.nii.gz")])
    assert no_labels["cases"] == ["tubes_001"] and "adherence_snake" not in no_labels["layers"][0]["summary"]

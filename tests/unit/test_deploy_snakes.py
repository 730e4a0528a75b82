"""show-snakes pieces that need no trained model: position sampling, coordinate mapping, stage matching, errors.

The full command on a trained DSConv model (PNG written, plotted points equal to the hooked layer's
``snake_coordinates``) is tested in integration/test_deploy_trained.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from support.networks import with_snakes
from support.plans import tiny_plans

from nnunet_tubeconv.deploy.snakes import (
    NoSnakesError,
    _find_channel_files,
    cumulative_strides,
    preprocessed_to_original,
    show_snakes,
    spread_points,
    stage_of,
)


def test_spread_points_cover_the_candidates_evenly():
    grid = np.argwhere(np.ones((60, 60), dtype=bool))
    idx = spread_points(grid, 36, seed=0)
    assert len(idx) == 36 and len(set(idx.tolist())) == 36
    pts = grid[idx].astype(float)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(36) * 1e9
    assert d.min() >= 2  # no two picks in one spot
    # every 20x20 ninth of the square gets picks: no region is left out, the border is not preferred
    counts = np.histogram2d(pts[:, 0], pts[:, 1], bins=3, range=[[0, 60], [0, 60]])[0]
    assert counts.min() >= 2
    assert np.array_equal(spread_points(grid, 36, seed=0), idx)  # seeded


def test_spread_points_edge_cases():
    assert len(spread_points(np.zeros((0, 2), dtype=int), 5)) == 0
    few = np.array([[3, 4], [10, 1], [7, 7]])
    assert sorted(spread_points(few, 10).tolist()) == [0, 1, 2]


def test_preprocessed_to_original_undoes_resampling_and_crop():
    props = {
        "shape_after_cropping_and_before_resampling": (1, 50, 40),
        "bbox_used_for_cropping": [[0, 1], [5, 55], [2, 42]],
    }
    # rows resampled 50 -> 100 (factor 2 finer), columns 40 -> 20 (factor 2 coarser), slices untouched
    q = np.array([[0.0, 0.0, 0.0], [0.0, 99.0, 19.0], [0.0, 49.5, 9.5]])
    o = preprocessed_to_original(q, props, (1, 100, 20))
    np.testing.assert_allclose(o[:, 0], 0)
    np.testing.assert_allclose(o[:, 1], [5 + 0.5 * 0.5 - 0.5, 5 + 49.25, 5 + 24.5])  # (q + .5) / 2 - .5 + 5
    np.testing.assert_allclose(o[:, 2], [2 + 0.5, 2 + 38.5, 2 + 19.5])  # (q + .5) * 2 - .5 + 2
    with pytest.raises(ValueError, match="axes"):
        preprocessed_to_original(q[:, :2], props, (1, 100, 20))


def test_stage_of_matches_strided_grids():
    cum = cumulative_strides([[1, 1], [2, 2], [2, 1]], 2)
    assert cum == [[1, 1], [2, 2], [4, 2]]
    assert stage_of((32, 48), (32, 48), cum) == 0
    assert stage_of((16, 24), (32, 48), cum) == 1
    assert stage_of((8, 24), (32, 48), cum) == 2
    with pytest.raises(ValueError, match="matches no stage"):
        stage_of((5, 5), (32, 48), cum)


def test_channel_files(tmp_path):
    for c in range(2):
        (tmp_path / f"case_{c:04d}.nii.gz").write_bytes(b"")
    first = str(tmp_path / "case_0000.nii.gz")
    assert _find_channel_files([first], 2, ".nii.gz") == [first, str(tmp_path / "case_0001.nii.gz")]
    with pytest.raises(ValueError, match="takes 3 input channel"):
        _find_channel_files([first], 3, ".nii.gz")
    with pytest.raises(ValueError, match="does not exist"):
        _find_channel_files([str(tmp_path / "nope.nii.gz")], 1, ".nii.gz")


def test_a_model_without_dsconv_is_refused(tmp_path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(tiny_plans())
    cm = pm.get_configuration("2d")
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 2, False)
    model = SimpleNamespace(network=net, trainer_name="nnUNetTrainer", configuration_manager=cm)
    with pytest.raises(NoSnakesError, match="no DSConv layer.*nnUNetTrainerDSConv"):
        show_snakes(model, ["unused.nii.gz"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------------------------
# the whole command on networks with DSConv layers put in by hand (no training): 2D and 3D, with resampling


def _hooked_coords(model, result, layer):
    import torch

    module = model.network.get_submodule(layer.name)
    seen = {}
    h = module.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    try:
        with torch.no_grad():
            model.network(result.network_input)
            coords = module.snake_coordinates(seen["x"])[0]  # (K, d, *S)
    finally:
        h.remove()
    return np.stack([coords[(slice(None), slice(None), *p)].numpy() for p in layer.positions])


def test_show_snakes_2d_maps_back_through_resampling(tmp_path):
    from nnunet_tubeconv.data.synthetic import write_synthetic_dataset

    raw = write_synthetic_dataset(tmp_path / "raw", 990, 2, 1, shape=(48, 40), spacing=(0.5, 0.5), name="Half")
    image = raw / "imagesTr" / "tubes_000_0000.nii.gz"
    model = with_snakes("2d", [("encoder.stages.0.0", 0), ("decoder.stages.1", 1), ("encoder.stages.1.0", 1)])
    result = show_snakes(model, [str(image)], tmp_path / "s.png", points=8)  # default: the finest stage, 0
    assert result.path.stat().st_size > 5000 and result.stages_available == [0, 1] and result.stage == 0
    assert result.image.shape == (48, 40)  # the file itself is shown, at its own resolution
    assert [tuple(result.network_input.shape)] == [(1, 1, 24, 20)]  # preprocessed to spacing 1: half the size
    assert sorted(layer.morph_axis for layer in result.layers) == [0, 1]  # the stage-1 layer is not drawn
    for layer in result.layers:
        assert layer.coords.shape == (8, 5, 2)
        np.testing.assert_array_equal(layer.coords, _hooked_coords(model, result, layer))
        # spacing 0.5 -> 1.0 halves the grid: a network voxel q sits at (q + 0.5) * 2 - 0.5 in the file
        np.testing.assert_allclose(layer.display, (layer.coords + 0.5) * 2 - 0.5, atol=1e-5)
        np.testing.assert_allclose(layer.plotted, layer.display)
    with pytest.raises(NoSnakesError, match=r"no DSConv works at stage 2; stages with DSConv layers: \[0, 1\]"):
        show_snakes(model, [str(image)], tmp_path / "t.png", stage=2)


def test_show_snakes_3d_window_and_slice(tmp_path):
    from nnunet_tubeconv.data.synthetic import write_synthetic_dataset

    raw = write_synthetic_dataset(tmp_path / "raw", 991, 3, 1, shape=(20, 36, 32), spacing=(2.0, 1.0, 1.0),
                                  name="Thick")
    image = raw / "imagesTr" / "tubes_000_0000.nii.gz"
    model = with_snakes("3d_fullres", [("encoder.stages.0.0", 0), ("decoder.stages.1", 2)])
    result = show_snakes(model, [str(image)], tmp_path / "s3.png", slice_index=9, points=6,
                         window=(4, 6, 20, 18))
    assert result.slice_index == 9 and result.image.shape == (36, 32)
    assert tuple(result.network_input.shape) == (1, 1, 16, 36, 32)  # a patch-deep window of the 40 resampled slices
    for layer in result.layers:
        np.testing.assert_array_equal(layer.coords, _hooked_coords(model, result, layer))
        # in-plane spacing unchanged: rows/columns of the snake points are the displayed pixels
        np.testing.assert_allclose(layer.display, layer.coords[..., 1:], atol=1e-5)
        centre = layer.display[:, 2]  # the positions themselves lie inside the window
        assert ((centre[:, 0] >= 4) & (centre[:, 0] < 24) & (centre[:, 1] >= 6) & (centre[:, 1] < 24)).all()
        # every position lies in the plane of slice 9: resampled slice round((9 + .5) * 2 - .5) = 18, which is
        # slice 8 of the 16-deep window that starts at 18 - 8 = 10
        assert set(layer.positions[:, 0].tolist()) == {8}

"""Synthetic vessel trees: determinism, partial-volume rasterisation, topology, and nnU-Net raw-format validity."""

import json
import math

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_tubeconv.cli import main
from nnunet_tubeconv.data.synthetic import (
    GENERATOR_VERSION,
    generate_case,
    murray_angles,
    rasterise,
    write_synthetic_dataset,
)
from nnunet_tubeconv.evaluation.metrics import betti_numbers


@pytest.mark.parametrize("dim,shape", [(2, (64, 72)), (3, (32, 36, 40))])
def test_same_seed_identical_different_seed_differs(dim, shape):
    a = generate_case(seed=3, case_index=1, dim=dim, shape=shape)
    b = generate_case(seed=3, case_index=1, dim=dim, shape=shape)
    assert a.image.shape == shape and a.label.shape == shape
    assert a.image.dtype == np.float32 and a.label.dtype == np.uint8
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    c = generate_case(seed=4, case_index=1, dim=dim, shape=shape)
    d = generate_case(seed=3, case_index=2, dim=dim, shape=shape)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.label, c.label)
    assert not np.array_equal(a.image, d.image)


def test_rasterise_2d_partial_volume_and_centre_label():
    # horizontal tube between pixel rows 10 and 11: centres are 0.5 away from the axis
    thin = np.array([[10.5, 2.0, 10.5, 29.0, 0.3, 0.3]])
    cov, lab = rasterise(thin, (21, 32))
    assert cov[:, 15].sum() == pytest.approx(0.6, abs=1e-5)  # area conserved: width 2r
    assert cov[10, 15] == pytest.approx(0.3, abs=1e-5) and cov[11, 15] == pytest.approx(0.3, abs=1e-5)
    # default rule: the centreline is drawn one pixel wide (row rint(10.5) = 10), so the thin tube stays one piece
    assert lab[10, 2:30].all() and lab.sum() == 28
    _, noisy = rasterise(thin, (21, 32), label_rule="centre-in-tube")
    assert noisy.sum() == 0  # label-noise rule: sub-voxel vessel missing from the label, visible in the image
    with pytest.raises(ValueError, match="label_rule must be one of"):
        rasterise(thin, (21, 32), label_rule="dist")
    thick = np.array([[10.0, 2.0, 10.0, 29.0, 2.0, 2.0]])
    cov, lab = rasterise(thick, (21, 32))
    assert cov[:, 15].sum() == pytest.approx(4.0, abs=1e-5)
    assert lab[:, 15].nonzero()[0].tolist() == [8, 9, 10, 11, 12]
    assert cov.max() <= 1.0 and cov.min() >= 0.0


@pytest.mark.parametrize("r,tol", [(0.3, 0.02), (1.0, 0.1), (3.0, 0.02)])
def test_rasterise_3d_cross_section_area(r, tol):
    seg = np.array([[16.0, 16.0, 2.0, 16.0, 16.0, 29.0, r, r]])
    cov, lab = rasterise(seg, (33, 33, 32))
    area = float(cov[:, :, 15].sum())
    assert area == pytest.approx(math.pi * r * r, rel=tol)
    assert lab[16, 16, 15]


@pytest.mark.parametrize("dim,shape", [(2, (64, 72)), (3, (32, 36, 40))])
def test_rasterise_batched_equals_one_segment_at_a_time(dim, shape):
    segments = generate_case(seed=2, case_index=0, dim=dim, shape=shape).segments
    cov, lab = rasterise(segments, shape)
    ref_cov, ref_lab = np.zeros(shape, np.float32), np.zeros(shape, bool)
    for row in segments:
        c, m = rasterise(row[None], shape)
        np.maximum(ref_cov, c, out=ref_cov)
        ref_lab |= m
    np.testing.assert_array_equal(cov, ref_cov)
    np.testing.assert_array_equal(lab, ref_lab)
    with pytest.raises(ValueError, match="segments must be"):
        rasterise(segments[:, :3], shape)


def test_murray_angles():
    r1 = 2.0 ** (-1.0 / 3.0)  # symmetric split obeying r0^3 = r1^3 + r2^3
    t1, t2 = murray_angles(1.0, r1, r1)
    assert math.degrees(t1) == pytest.approx(37.47, abs=0.01) and t1 == pytest.approx(t2)
    thin = 0.3 / (1 + 0.3**3) ** (1 / 3)
    t_trunk, t_side = murray_angles(1.0, thin / 0.3, thin)
    assert math.degrees(t_trunk) < 6.0 and 70.0 < math.degrees(t_side) < 90.0


@pytest.mark.parametrize("dim,shape,connectivity,cases", [(2, (160, 160), 8, 12), (3, (64, 64, 64), 26, 4),
                                                         (3, (96, 96, 96), 26, 2)])
def test_every_tree_is_one_component_of_the_label(dim, shape, connectivity, cases):
    """Label Betti-0 equals the number of trees, for every case; each tree alone is one component."""
    for case_index in range(cases):
        case = generate_case(seed=0, case_index=case_index, dim=dim, shape=shape)
        radii = case.radii
        assert radii.min() < 0.5 and radii.max() > 1.5  # the trees still end in sub-voxel twigs
        trees = np.unique(case.segments[:, -1])
        assert trees.tolist() == list(range(len(trees))) and len(trees) >= 2
        _, n = cc3d.connected_components(case.label, connectivity=connectivity, return_N=True)
        assert n == len(trees), (case_index, n, len(trees))
        assert betti_numbers(case.label.astype(bool))[0] == len(trees)  # the metric's own count agrees
        for k in trees:
            _, lab = rasterise(case.segments[case.segments[:, -1] == k], shape)
            assert cc3d.connected_components(lab.astype(np.uint8), connectivity=connectivity, return_N=True)[1] == 1
        assert 0.001 < case.label.mean() < 0.4


@pytest.mark.parametrize("dim,shape,connectivity", [(2, (160, 160), 8), (3, (64, 64, 64), 26)])
def test_label_noise_rule_fragments_the_same_trees(dim, shape, connectivity):
    clean = generate_case(seed=0, case_index=0, dim=dim, shape=shape)
    noisy = generate_case(seed=0, case_index=0, dim=dim, shape=shape, label_rule="centre-in-tube")
    assert clean.image.tobytes() == noisy.image.tobytes()  # same trees, same image: only the label differs
    np.testing.assert_array_equal(clean.segments, noisy.segments)
    assert not np.any(noisy.label & ~clean.label)  # the noisy label is the clean one minus twig voxels
    _, n = cc3d.connected_components(noisy.label, connectivity=connectivity, return_N=True)
    assert n > 3 * len(np.unique(clean.segments[:, -1]))  # sub-voxel twigs break into fragments


def test_write_dataset_is_valid_nnunet_raw(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    out = write_synthetic_dataset(tmp_path, 912, 2, 3, shape=(48, 56), seed=1, spacing=(0.5, 0.75))
    assert out == tmp_path / "Dataset912_SynthTubes2D"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "vessel": 1}
    assert dj["channel_names"] == {"0": "synthetic"} and dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"tubes_00{i}.nii.gz" for i in range(3)]
    img = sitk.ReadImage(str(out / "imagesTr" / "tubes_001_0000.nii.gz"))
    assert img.GetSize() == (56, 48) and img.GetSpacing() == pytest.approx((0.75, 0.5))
    expected = generate_case(seed=1, case_index=1, dim=2, shape=(48, 56))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), expected.image)
    seg, props = SimpleITKIO().read_seg(str(out / "labelsTr" / "tubes_001.nii.gz"))
    assert seg.shape == (1, 1, 48, 56) and props["spacing"][1:] == pytest.approx([0.5, 0.75])
    assert set(np.unique(seg)) <= {0, 1}
    verify_dataset_integrity(str(out), num_processes=1)  # nnU-Net's own check raises on any problem


def test_write_3d_dataset_geometry(tmp_path):
    out = write_synthetic_dataset(tmp_path, 913, 3, 1, shape=(24, 28, 32), spacing=(2.0, 1.0, 1.0))
    img = sitk.ReadImage(str(out / "imagesTr" / "tubes_000_0000.nii.gz"))
    lab = sitk.ReadImage(str(out / "labelsTr" / "tubes_000.nii.gz"))
    assert img.GetSize() == lab.GetSize() == (32, 28, 24)
    assert img.GetSpacing() == pytest.approx((1.0, 1.0, 2.0)) and lab.GetSpacing() == img.GetSpacing()
    assert sitk.GetArrayFromImage(lab).dtype == np.uint8


def test_refuses_other_dataset_with_same_id(tmp_path):
    write_synthetic_dataset(tmp_path, 914, 2, 1, shape=(32, 32), name="First")
    with pytest.raises(ValueError, match="Dataset914_First"):
        write_synthetic_dataset(tmp_path, 914, 2, 1, shape=(32, 32), name="Second")
    # same data set again: replaced in place
    write_synthetic_dataset(tmp_path, 914, 2, 2, shape=(32, 32), name="First")
    assert len(list((tmp_path / "Dataset914_First" / "imagesTr").iterdir())) == 2
    write_synthetic_dataset(tmp_path, 914, 2, 1, shape=(32, 32), name="Second", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset914_Second"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dim": 4}, "dim must be 2 or 3"),
        ({"shape": (32, 32, 32)}, "shape must have 2 entries"),
        ({"num_cases": 0}, "num_cases"),
        ({"dataset_id": 1000}, "1..999"),
        ({"name": "bad_name"}, "dataset name"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"raw_root": tmp_path, "dataset_id": 915, "dim": 2, "num_cases": 1, "shape": (32, 32)} | kwargs
    with pytest.raises(ValueError, match=match):
        write_synthetic_dataset(**args)
    assert not any(tmp_path.iterdir())


def test_cli_synth(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["synth", "--num-cases", "1", "--shape", "32x40"]) == 2
    assert "nnUNet_raw" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert main(["synth", "--num-cases", "2", "--shape", "32x40", "--dataset-id", "916", "--seed", "5"]) == 0
    out = tmp_path / "Dataset916_SynthTubes2D"
    assert sitk.ReadImage(str(out / "imagesTr" / "tubes_001_0000.nii.gz")).GetSize() == (40, 32)
    assert main(["synth", "--num-cases", "1", "--shape", "32x40", "--dataset-id", "916", "--name", "Other"]) == 2
    assert "already used" in capsys.readouterr().err
    stamp = json.loads((out / "dataset.json").read_text())["synthetic"]
    assert stamp == {"seed": 5, "dim": 2, "shape": [32, 40], "num_cases": 2, "version": GENERATOR_VERSION,
                     "label_rule": "connected"} and GENERATOR_VERSION == 2
    assert main(["synth", "--num-cases", "1", "--shape", "32x40", "--dataset-id", "917", "--label-noise"]) == 0
    stamp = json.loads((tmp_path / "Dataset917_SynthTubes2D" / "dataset.json").read_text())["synthetic"]
    assert stamp["label_rule"] == "centre-in-tube"

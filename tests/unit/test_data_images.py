"""Converters of folders of image files: the generic ``convert images``, STARE (two observers) and vesselNN (3D
multi-page TIFF, spacing from OME-XML metadata), on small fixtures written here; bad input is one error naming the
file and leaves no data set behind; integration runs on the real folders when ../shared/data has them."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image
from support import SHARED_DATA

from nnunet_tubeconv.cli import main
from nnunet_tubeconv.data.images import convert_pairs, match_labels, pair_folders, parse_value_map
from nnunet_tubeconv.data.stare import SECOND_OBSERVER, convert_stare
from nnunet_tubeconv.data.vesselnn import convert_vesselnn, metadata_spacing

SHARED = Path(os.environ.get("NNUNET_TUBECONV_SHARED_DATA", SHARED_DATA))


def _read(path: Path) -> tuple[np.ndarray, tuple]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img.GetSpacing()


def _write_pngs(root: Path, n: int = 3, shape=(12, 16), label_suffix: str = ".ah", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    out = {}
    for i in range(n):
        rgb = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
        lab = np.zeros(shape, np.uint8)
        lab[2 + i, 3:10] = 255
        Image.fromarray(rgb).save(root / "images" / f"im{i:04d}.png")
        Image.fromarray(lab).save(root / "labels" / f"im{i:04d}{label_suffix}.png")
        out[f"im{i:04d}"] = (rgb, lab)
    return out


def test_images_converter_pairs_by_name_keeps_green_and_binarises(tmp_path):
    arrays = _write_pngs(tmp_path / "src")
    rc = main(["convert", "images", str(tmp_path / "src" / "images"), str(tmp_path / "src" / "labels"),
               "--dataset-id", "950", "--name", "Toy", "--channels", "green", "-o", str(tmp_path / "raw")])
    assert rc == 0
    ds = tmp_path / "raw" / "Dataset950_Toy"
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["channel_names"] == {"0": "green"}
    assert meta["labels"] == {"background": 0, "foreground": 1}
    for case, (rgb, lab) in arrays.items():
        img, spacing = _read(ds / "imagesTr" / f"Toy_{case}_0000.nii.gz")
        np.testing.assert_array_equal(img, rgb[..., 1])
        seg, _ = _read(ds / "labelsTr" / f"Toy_{case}.nii.gz")
        np.testing.assert_array_equal(seg, (lab > 0).astype(np.uint8))
        assert spacing == (1.0, 1.0)
    assert not list((tmp_path / "raw").glob(".*partial*"))


def test_images_converter_all_channels_threshold_and_value_map(tmp_path):
    _write_pngs(tmp_path / "src")
    out = convert_pairs(pair_folders(tmp_path / "src" / "images", [tmp_path / "src" / "labels"]), tmp_path / "raw",
                        951, "Rgb", channels="all", threshold=254)
    assert len(list((out / "imagesTr").glob("*_0002.nii.gz"))) == 3
    out = convert_pairs(pair_folders(tmp_path / "src" / "images", [tmp_path / "src" / "labels"]), tmp_path / "raw",
                        952, "Mapped", channels="grey", value_map={255: 2})
    seg, _ = _read(out / "labelsTr" / "Mapped_im0000.nii.gz")
    assert set(np.unique(seg)) == {0, 2}
    assert json.loads((out / "dataset.json").read_text())["labels"] == {"background": 0, "class2": 2}
    with pytest.raises(ValueError, match="not in --map"):
        convert_pairs(pair_folders(tmp_path / "src" / "images", [tmp_path / "src" / "labels"]), tmp_path / "raw",
                      953, "Bad", value_map={128: 1})
    with pytest.raises(ValueError, match="VALUE=LABEL"):
        parse_value_map(["255:1"])


def test_match_labels_takes_the_longest_case_name_up_to_a_separator(tmp_path):
    cases = {"im1": tmp_path / "im1.png", "im10": tmp_path / "im10.png"}
    out = match_labels(cases, [tmp_path / "im10.ah.png", tmp_path / "im1_manual1.gif"])
    assert out == {"im10": tmp_path / "im10.ah.png", "im1": tmp_path / "im1_manual1.gif"}
    with pytest.raises(ValueError, match="matches no image"):
        match_labels(cases, [tmp_path / "im2.png"])
    with pytest.raises(ValueError, match="two labels for image"):
        match_labels(cases, [tmp_path / "im1.a.png", tmp_path / "im1.b.png"])


@pytest.mark.parametrize("damage, message", [
    ("unmatched", "no label in"),
    ("shape", "has shape"),
    ("empty", "no foreground"),
    ("unreadable", "cannot read"),
])
def test_bad_input_is_one_error_naming_the_file_and_leaves_nothing(tmp_path, capsys, damage, message):
    _write_pngs(tmp_path / "src")
    lab = tmp_path / "src" / "labels" / "im0001.ah.png"
    if damage == "unmatched":
        lab.unlink()
    elif damage == "shape":
        Image.fromarray(np.full((5, 5), 255, np.uint8)).save(lab)
    elif damage == "empty":
        Image.fromarray(np.zeros((12, 16), np.uint8)).save(lab)
    else:
        lab.write_bytes(b"not a png")
    # an older good data set under the same name survives a failed conversion
    good = convert_pairs(pair_folders(tmp_path / "src" / "images", [tmp_path / "src" / "images"]), tmp_path / "raw",
                         960, "Keep", threshold=-1)
    rc = main(["convert", "images", str(tmp_path / "src" / "images"), str(tmp_path / "src" / "labels"),
               "--dataset-id", "960", "--name", "Keep", "-o", str(tmp_path / "raw")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert "im0001" in err[0]
    assert json.loads((good / "dataset.json").read_text())["numTraining"] == 3
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset960_Keep"]


def _write_stare(root: Path) -> dict:
    arrays = {}
    for sub in ("images", "labels-ah", "labels-vk"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in (1, 2):
        rgb = rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
        ah = np.zeros((10, 14), np.uint8)
        ah[3, 2:12] = 255
        vk = ah.copy()
        vk[6, 2:12] = 255
        Image.fromarray(rgb).save(root / "images" / f"im{i:04d}.png")
        Image.fromarray(ah).save(root / "labels-ah" / f"im{i:04d}.ah.png")
        Image.fromarray(vk).save(root / "labels-vk" / f"im{i:04d}.vk.png")
        arrays[f"im{i:04d}"] = (rgb, ah, vk)
    return arrays


def test_stare_writes_first_observer_as_reference_and_second_beside_it(tmp_path):
    arrays = _write_stare(tmp_path / "STARE")
    out = convert_stare(tmp_path / "STARE", tmp_path / "raw")
    assert out.name == "Dataset903_STARE"
    for case, (rgb, ah, vk) in arrays.items():
        img, _ = _read(out / "imagesTr" / f"STARE_{case}_0000.nii.gz")
        np.testing.assert_array_equal(img, rgb[..., 1])
        np.testing.assert_array_equal(_read(out / "labelsTr" / f"STARE_{case}.nii.gz")[0], ah > 0)
        np.testing.assert_array_equal(_read(out / f"labelsTr_{SECOND_OBSERVER}" / f"STARE_{case}.nii.gz")[0], vk > 0)
    assert json.loads((out / "dataset.json").read_text())["labels"] == {"background": 0, "vessel": 1}


def test_stare_wrong_folder_says_what_is_expected(tmp_path, capsys):
    (tmp_path / "x" / "images").mkdir(parents=True)
    assert main(["convert", "stare", str(tmp_path / "x"), "-o", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert "labels-ah" in err and "labels-vk" in err


_OME = ('<OME><Image ID="Image:0"><Pixels DimensionOrder="XYCZT" ID="Pixels:0" PhysicalSizeX="{x}" '
        'PhysicalSizeXUnit="um" PhysicalSizeY="{x}" PhysicalSizeZ="{z}" SizeX="16"></Pixels></Image></OME>')


def _write_vesselnn(root: Path, with_meta=("a_stack",)) -> dict:
    for sub in ("images", "labels", "metadata"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(2)
    out = {}
    for name, lab_name, x in (("a_stack", "a_stack_labels_v1", 0.994), ("b_stack", "b_stack_labelsMarc", 0.5)):
        img = rng.integers(0, 256, size=(4, 8, 10), dtype=np.uint8)
        lab = np.zeros((4, 8, 10), np.uint16)
        lab[1:3, 4, 2:8] = 254
        tifffile.imwrite(root / "images" / f"{name}_BM4D_denoised.tif", img)
        tifffile.imwrite(root / "labels" / f"{lab_name}.tif", lab)
        if name in with_meta:
            (root / "metadata" / f"{name}_metadata.xml.txt").write_text(_OME.format(x=x, z=5.0))
        out[name] = (img, lab)
    return out


def test_vesselnn_spacing_from_metadata_and_refusal_without_it(tmp_path, capsys):
    arrays = _write_vesselnn(tmp_path / "v")
    assert metadata_spacing(tmp_path / "v" / "metadata" / "a_stack_metadata.xml.txt") == (5.0, 0.994, 0.994)
    rc = main(["convert", "vesselnn", str(tmp_path / "v"), "-o", str(tmp_path / "raw")])
    err = capsys.readouterr().err
    assert rc == 2 and "b_stack" in err and "--spacing" in err
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())
    lines = []
    out = convert_vesselnn(tmp_path / "v", tmp_path / "raw", spacing=["b_stack=4,0.5,0.5"], log=lines.append)
    assert any("b_stack" in s and "given with --spacing" in s for s in lines)
    assert any("a_stack" in s and "from a_stack_metadata" in s for s in lines)
    img, sp = _read(out / "imagesTr" / "vesselNN_a_stack_0000.nii.gz")
    np.testing.assert_array_equal(img, arrays["a_stack"][0])
    assert sp == pytest.approx((0.994, 0.994, 5.0))  # SimpleITK's (x, y, z)
    seg, sp_b = _read(out / "labelsTr" / "vesselNN_b_stack.nii.gz")
    np.testing.assert_array_equal(seg, arrays["b_stack"][1] > 0)
    assert sp_b == pytest.approx((0.5, 0.5, 4.0))
    with pytest.raises(ValueError, match="not in"):
        convert_vesselnn(tmp_path / "v", tmp_path / "raw", spacing=["c_stack=4,1,1"], force=True)


@pytest.mark.skipif(not (SHARED / "STARE" / "labels-vk").is_dir(), reason="../shared/data/STARE is absent")
def test_real_stare(tmp_path):
    out = convert_stare(SHARED / "STARE", tmp_path)
    assert len(list((out / "labelsTr").iterdir())) == 20 == len(list((out / f"labelsTr_{SECOND_OBSERVER}").iterdir()))
    seg, _ = _read(out / "labelsTr" / "STARE_im0001.nii.gz")
    assert seg.shape == (605, 700) and 0.03 < seg.mean() < 0.2


@pytest.mark.skipif(not (SHARED / "vesselNN" / "images").is_dir(), reason="../shared/data/vesselNN is absent")
def test_real_vesselnn(tmp_path):
    out = convert_vesselnn(SHARED / "vesselNN", tmp_path, spacing=["5,0.621,0.621"], log=lambda s: None)
    assert len(list((out / "labelsTr").iterdir())) == 9
    _, sp = _read(out / "imagesTr" / "vesselNN_burgess2014_lowerRes_hiSNR_0000.nii.gz")
    assert sp == pytest.approx((1.59, 1.59, 5.0))

"""DRIVE converter: a fake original-layout archive and a fake NIfTI layout built in tmp_path, layout errors, and an
integration run on the real NIfTI DRIVE copy (skipped when it is absent)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from support import SHARED_DATA

from nnunet_tubeconv.cli import main
from nnunet_tubeconv.data.drive import convert_drive, find_drive_source

H, W = 20, 24


def _drive_data_folder() -> Path:
    env = os.environ.get("NNUNET_TUBECONV_DRIVE")
    return Path(env) if env else SHARED_DATA / "DRIVE"


def _make_original(root: Path, train_ids=("21", "22"), test_ids=("01",), with_test_manual=False):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, ids in (("training", train_ids), ("test", test_ids)):
        for sub in ("images", "1st_manual", "mask"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for cid in ids:
            rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
            manual = np.where(rng.random((H, W)) > 0.7, 255, 0).astype(np.uint8)
            mask = np.zeros((H, W), np.uint8)
            mask[2:-2, 3:-3] = 255
            Image.fromarray(rgb).save(root / split / "images" / f"{cid}_{split}.tif")
            if split == "training" or with_test_manual:
                Image.fromarray(manual).save(root / split / "1st_manual" / f"{cid}_manual1.gif")
            Image.fromarray(mask).save(root / split / "mask" / f"{cid}_{split}_mask.gif")
            arrays[cid] = (rgb, manual, mask)
    return arrays


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_original_layout_green(tmp_path):
    arrays = _make_original(tmp_path / "DRIVE")
    out = convert_drive(tmp_path / "DRIVE", tmp_path / "raw", dataset_id=950)
    assert out.name == "Dataset950_DRIVE"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["DRIVE_21_0000.nii.gz", "DRIVE_22_0000.nii.gz"]
    rgb, manual, mask = arrays["22"]
    np.testing.assert_array_equal(_read(out / "imagesTr" / "DRIVE_22_0000.nii.gz"), rgb[..., 1])
    lab = _read(out / "labelsTr" / "DRIVE_22.nii.gz")
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, (manual > 127).astype(np.uint8))
    np.testing.assert_array_equal(_read(out / "masksTr" / "DRIVE_22.nii.gz"), (mask > 127).astype(np.uint8))
    # test split: image and mask, no annotation in this fake archive
    np.testing.assert_array_equal(_read(out / "imagesTs" / "DRIVE_01_0000.nii.gz"), arrays["01"][0][..., 1])
    assert (out / "masksTs" / "DRIVE_01.nii.gz").is_file() and not (out / "labelsTs").exists()
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "green"} and dj["numTraining"] == 2
    assert dj["labels"] == {"background": 0, "vessel": 1} and dj["file_ending"] == ".nii.gz"


def test_original_layout_rgb_reads_in_nnunet(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    arrays = _make_original(tmp_path / "DRIVE", with_test_manual=True)
    out = convert_drive(tmp_path / "DRIVE", tmp_path / "raw", dataset_id=951, channels="rgb")
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    files = [str(out / "imagesTr" / f"DRIVE_21_000{c}.nii.gz") for c in range(3)]
    images, props = SimpleITKIO().read_images(files)
    seg, seg_props = SimpleITKIO().read_seg(str(out / "labelsTr" / "DRIVE_21.nii.gz"))
    assert images.shape == (3, 1, H, W) and seg.shape == (1, 1, H, W)
    np.testing.assert_array_equal(images[:, 0].transpose(1, 2, 0), arrays["21"][0])
    assert props["spacing"] == seg_props["spacing"]
    assert (out / "labelsTs" / "DRIVE_01.nii.gz").is_file()


def test_original_layout_missing_manual_is_named(tmp_path):
    _make_original(tmp_path / "DRIVE")
    (tmp_path / "DRIVE" / "training" / "1st_manual" / "22_manual1.gif").unlink()
    with pytest.raises(ValueError, match=r"incomplete(.|\n)*22_training\.tif"):
        convert_drive(tmp_path / "DRIVE", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_unknown_layout_says_expected_and_found(tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"Expected either(.|\n)*Image_Tr(.|\n)*Found: readme\.txt"):
        find_drive_source(tmp_path / "stuff")
    assert main(["convert", "drive", str(tmp_path / "stuff"), "-o", str(tmp_path / "raw")]) == 2
    assert "training/images/NN_training.tif" in capsys.readouterr().err


def _make_nifti_layout(root: Path, ids=("21", "22")):
    rng = np.random.default_rng(1)
    for sub in ("Image_Tr", "Label_Tr"):
        (root / sub).mkdir(parents=True)
    arrays = {}
    for cid in ids:
        img = rng.integers(1, 256, size=(H, W)).astype(np.uint16)
        lab = (rng.random((H, W)) > 0.8).astype(np.float32)
        for sub, arr in (("Image_Tr", img), ("Label_Tr", lab)):
            itk = sitk.GetImageFromArray(arr)
            itk.SetSpacing((1.0, 1.0))
            sitk.WriteImage(itk, str(root / sub / f"{cid}.nii.gz"))
        arrays[cid] = (img, lab)
    return arrays


def test_nifti_layout(tmp_path):
    arrays = _make_nifti_layout(tmp_path / "src")
    assert main(["convert", "drive", str(tmp_path / "src"), "-o", str(tmp_path / "raw"), "--dataset-id", "952"]) == 0
    out = tmp_path / "raw" / "Dataset952_DRIVE"
    np.testing.assert_array_equal(_read(out / "imagesTr" / "DRIVE_21_0000.nii.gz"), arrays["21"][0])
    lab = _read(out / "labelsTr" / "DRIVE_21.nii.gz")
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, arrays["21"][1].astype(np.uint8))
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "fundus"}


def test_nifti_layout_unmatched_cases(tmp_path):
    _make_nifti_layout(tmp_path / "src")
    (tmp_path / "src" / "Label_Tr" / "22.nii.gz").rename(tmp_path / "src" / "Label_Tr" / "23.nii.gz")
    with pytest.raises(ValueError, match=r"no label for 22(.|\n)*no image for labels 23"):
        find_drive_source(tmp_path / "src")


def test_real_drive_nifti(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    src = _drive_data_folder()
    if not (src / "Image_Tr").is_dir():
        pytest.skip(f"real DRIVE data not found at {src} (set NNUNET_TUBECONV_DRIVE to its folder to run this test)")
    source = find_drive_source(src)
    assert source.layout == "nifti" and len(source.train) == 20
    out = convert_drive(src, tmp_path, dataset_id=953)
    img = sitk.ReadImage(str(out / "imagesTr" / "DRIVE_21_0000.nii.gz"))
    lab = _read(out / "labelsTr" / "DRIVE_21.nii.gz")
    assert img.GetSize() == (565, 584) and lab.shape == (584, 565)
    assert set(np.unique(lab)) == {0, 1} and 0.05 < lab.mean() < 0.2  # vessels are ~9-14% of a DRIVE image
    verify_dataset_integrity(str(out), num_processes=1)

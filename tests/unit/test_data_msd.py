"""MSD wrapper: a tiny fake multi-modal (4D NIfTI) task converted through nnU-Net's own converter, and broken task
folders whose problems must all be named."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_tubeconv.cli import main
from nnunet_tubeconv.data.msd import check_msd_task_folder, convert_msd

SHAPE_XYZ = (12, 10, 6)


def _make_task(root: Path, name="Task77_FakeVessel", modalities=("T2", "ADC"), train=("fake_001", "fake_002"),
               test=("fake_003",)) -> tuple[Path, dict]:
    """MSD layout as distributed: nibabel-written NIfTI, 4D (x, y, z, modality) when there are several modalities."""
    task = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    data = {}
    for cid in (*train, *test):
        shape = SHAPE_XYZ + ((len(modalities),) if len(modalities) > 1 else ())
        img = rng.normal(size=shape).astype(np.float32)
        folder = "imagesTr" if cid in train else "imagesTs"
        nib.save(nib.Nifti1Image(img, affine), task / folder / f"{cid}.nii.gz")
        if cid in train:
            seg = rng.integers(0, 3, size=SHAPE_XYZ).astype(np.uint8)
            nib.save(nib.Nifti1Image(seg, affine), task / "labelsTr" / f"{cid}.nii.gz")
        data[cid] = img
    # macOS resource forks ship inside the official tarballs; both nnU-Net and the check must ignore them
    (task / "imagesTr" / "._fake_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    meta = {
        "name": "FakeVessel",
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "Vessel", "2": "Tumour"},
        "numTraining": len(train),
        "numTest": len(test),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    return task, data


@pytest.fixture
def isolated_nnunet_env(monkeypatch):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)


def test_check_accepts_complete_task(tmp_path):
    task, _ = _make_task(tmp_path)
    info = check_msd_task_folder(task)
    assert (info.task_id, info.name, info.num_training, info.num_test) == (77, "FakeVessel", 2, 1)
    assert info.modalities == {"0": "T2", "1": "ADC"}


def test_convert_multimodal_task(tmp_path, isolated_nnunet_env):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    task, data = _make_task(tmp_path / "src")
    out = convert_msd(task, raw_root=tmp_path / "raw", num_processes=1)
    assert out == tmp_path / "raw" / "Dataset077_FakeVessel"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "fake_001_0000.nii.gz", "fake_001_0001.nii.gz", "fake_002_0000.nii.gz", "fake_002_0001.nii.gz"
    ]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["fake_003_0000.nii.gz", "fake_003_0001.nii.gz"]
    adc = sitk.ReadImage(str(out / "imagesTr" / "fake_002_0001.nii.gz"))
    assert adc.GetDimension() == 3 and adc.GetSize() == SHAPE_XYZ
    assert adc.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))
    # sitk arrays are (z, y, x); the source was (x, y, z, modality)
    np.testing.assert_allclose(sitk.GetArrayFromImage(adc), data["fake_002"][..., 1].transpose(2, 1, 0))
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T2", "1": "ADC"}
    assert dj["labels"] == {"background": 0, "Vessel": 1, "Tumour": 2} and dj["file_ending"] == ".nii.gz"
    verify_dataset_integrity(str(out), num_processes=1)


def test_broken_task_lists_every_problem(tmp_path):
    task, _ = _make_task(tmp_path)
    (task / "labelsTr" / "fake_002.nii.gz").unlink()
    for f in (task / "imagesTs").iterdir():
        f.unlink()
    (task / "imagesTs").rmdir()
    meta = json.loads((task / "dataset.json").read_text())
    del meta["test"]
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        check_msd_task_folder(task)
    msg = str(e.value)
    assert "imagesTs/ is missing" in msg
    assert "images without a label in labelsTr/: fake_002" in msg
    assert "dataset.json lists labels missing from labelsTr/: fake_002" in msg
    assert "lacks the keys ['test']" in msg


def test_wrong_dimensionality_and_name(tmp_path):
    task, _ = _make_task(tmp_path, modalities=("T2", "ADC"))
    nib.save(nib.Nifti1Image(np.zeros(SHAPE_XYZ, np.float32), np.eye(4)), task / "imagesTr" / "fake_001.nii.gz")
    with pytest.raises(ValueError, match=r"4D with 2 volumes(.|\n)*fake_001\.nii\.gz 3D"):
        check_msd_task_folder(task)
    bad = tmp_path / "Task08_Hepatic_Vessel"
    bad.mkdir()
    with pytest.raises(ValueError, match="exactly one '_'"):
        check_msd_task_folder(bad)
    with pytest.raises(ValueError, match="does not exist"):
        check_msd_task_folder(tmp_path / "Task09_Nothing")


def test_cli_taken_id_then_overwrite_id(tmp_path, isolated_nnunet_env, capsys):
    task, _ = _make_task(tmp_path / "src", modalities=("CT",), train=("ct_001",), test=())
    (tmp_path / "raw" / "Dataset077_Other").mkdir(parents=True)
    assert main(["convert", "msd", str(task), "-o", str(tmp_path / "raw"), "-np", "1"]) == 2
    err = capsys.readouterr().err
    assert "Dataset077_Other" in err and "-overwrite_id" in err
    assert main(["convert", "msd", str(task), "-o", str(tmp_path / "raw"), "-np", "1", "-overwrite_id", "177"]) == 0
    out = tmp_path / "raw" / "Dataset177_FakeVessel"
    assert [p.name for p in (out / "imagesTr").iterdir()] == ["ct_001_0000.nii.gz"]
    assert (out / "labelsTr" / "ct_001.nii.gz").is_file()

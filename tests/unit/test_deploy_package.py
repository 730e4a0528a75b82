"""Challenge bundle pieces that need no trained model: requirement pins and the entry point's input discovery.

The whole bundle (nnU-Net zip, predict.py run on synthetic input) is tested in test_deploy_trained.py.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from nnunet_tubeconv import __version__
from nnunet_tubeconv.deploy.bundle_predict import file_ending, group_cases
from nnunet_tubeconv.deploy.package import pinned_requirements

ENDINGS = [".nii.gz", ".nrrd", ".mha", ".gipl"]


def _touch(folder: Path, *names: str) -> None:
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_pins_are_exact_and_cover_the_stack():
    pins = pinned_requirements()
    as_dict = dict(p.split("==") for p in pins)
    assert len(as_dict) == len(pins) and all("==" in p for p in pins)
    assert as_dict["nnunet-tubeconv"] == __version__
    assert as_dict["nnunetv2"] == version("nnunetv2")
    assert as_dict["torch"] == version("torch").split("+")[0] and "+" not in as_dict["torch"]
    # transitive: nnunetv2 -> dynamic-network-architectures, batchgenerators; ours -> SimpleITK
    for name in ("dynamic-network-architectures", "batchgenerators", "simpleitk", "numpy"):
        assert as_dict[name] == version(name)
    assert "pip" not in as_dict and "setuptools" not in as_dict


def test_pins_of_a_missing_distribution_raise():
    with pytest.raises(ValueError, match="not installed"):
        pinned_requirements("surely-not-an-installed-distribution-xyz")


def test_file_ending_prefers_the_longest_match():
    assert file_ending("case_0000.nii.gz", [".gz", ".nii.gz"]) == ".nii.gz"
    assert file_ending("CASE.MHA", ENDINGS) == ".mha"
    assert file_ending("notes.txt", ENDINGS) is None


def test_cases_are_grouped_by_channel_suffix(tmp_path):
    _touch(tmp_path, "a_0000.nii.gz", "a_0001.nii.gz", "b_0001.nii.gz", "b_0000.nii.gz", "readme.txt")
    cases = group_cases(tmp_path, ENDINGS, 2)
    assert [(c, e, [f.name for f in files]) for c, e, files in cases] == [
        ("a", ".nii.gz", ["a_0000.nii.gz", "a_0001.nii.gz"]),
        ("b", ".nii.gz", ["b_0000.nii.gz", "b_0001.nii.gz"]),
    ]


def test_other_names_are_single_channel_cases_found_recursively(tmp_path):
    # Grand Challenge style: /input/images/<slug>/<uuid>.mha, plus an nnU-Net-named case next to it
    _touch(tmp_path, "images/ct/1f3a.mha", "images/ct/77b0.mha", "liver_0000.nii.gz")
    cases = group_cases(tmp_path, ENDINGS, 1)
    assert [(c, e) for c, e, _ in cases] == [("liver", ".nii.gz"), ("1f3a", ".mha"), ("77b0", ".mha")]
    assert cases[1][2] == [tmp_path / "images/ct/1f3a.mha"]


def test_bad_inputs_raise_clear_errors(tmp_path):
    _touch(tmp_path / "one", "a_0000.nii.gz")
    with pytest.raises(ValueError, match=r"has channels \[0\] but the model needs 2"):
        group_cases(tmp_path / "one", ENDINGS, 2)
    _touch(tmp_path / "clash", "x/a.mha", "y/a.mha")
    with pytest.raises(ValueError, match="occurs in"):
        group_cases(tmp_path / "clash", ENDINGS, 1)
    _touch(tmp_path / "none", "a.png")
    with pytest.raises(ValueError, match="no input images"):
        group_cases(tmp_path / "none", ENDINGS, 1)

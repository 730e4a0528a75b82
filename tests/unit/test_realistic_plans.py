"""bench-train's realistic plans: nnU-Net's own default plans for DRIVE- and HepaticVessel-shaped data."""

import json

import numpy as np
import pytest
import torch
from support import SHARED_DATA

from nnunet_tubeconv.benchmarks.perf.realistic_plans import DRIVE_LIKE, REALISTIC_PLANS, realistic_plan
from nnunet_tubeconv.benchmarks.studies.snake_cost import profile_snake
from nnunet_tubeconv.cli import main

DRIVE = SHARED_DATA / "DRIVE"


def test_drive2d_is_nnunets_default_2d_plan():
    # what nnUNetv2_plan_experiment writes for the 20 DRIVE training images (run on the real data)
    entry, run = realistic_plan("drive2d")
    a = entry["arch_kwargs"]
    assert run["patch_size"] == [640, 640] and run["batch_size"] == 2 and run["num_classes"] == 2
    assert a["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512, 512]
    assert a["strides"] == [[1, 1]] + [[2, 2]] * 7 and a["conv_op"].endswith("Conv2d")
    json.dumps(entry)  # plain JSON, as a plans file holds it


def test_hepaticvessel3d_is_nnunets_default_3d_fullres_plan():
    entry, run = realistic_plan("hepaticvessel3d")
    a = entry["arch_kwargs"]
    # the 3d_fullres plan of calibrate-memory's Task08-like fingerprint (benchmarks/perf/results/calibration_cpu.md)
    assert run["patch_size"] == [64, 192, 192] and run["batch_size"] == 2 and run["num_classes"] == 3
    assert a["features_per_stage"] == [32, 64, 128, 256, 320, 320] and a["strides"][-1] == [1, 2, 2]


def test_unknown_plan_and_two_plans_are_refused(capsys):
    with pytest.raises(ValueError, match="realistic plans are"):
        realistic_plan("toy3d")
    assert main(["bench-train", "--quick", "--plan", "drive2d", "--plans", "x.json"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert sorted(REALISTIC_PLANS) == ["drive2d", "hepaticvessel3d"]


@pytest.mark.skipif(not (DRIVE / "Image_Tr").is_dir(), reason=f"DRIVE not found at {DRIVE}")
def test_drive_like_fingerprint_has_the_real_images_shapes():
    """The stated DRIVE fingerprint is what nnU-Net's reader sees in the 20 real images."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    files = sorted((DRIVE / "Image_Tr").glob("*.nii.gz"))
    assert len(files) == DRIVE_LIKE["num_training"]
    for f in files:
        image, props = SimpleITKIO().read_images([str(f)])
        assert list(image.shape[1:]) == DRIVE_LIKE["shape"]
        assert np.allclose(props["spacing"], DRIVE_LIKE["spacing"])


def test_profile_snake_on_the_toy_plan(tmp_path, restore_torch_threads):
    out = tmp_path / "profile.md"
    assert profile_snake.main(["--plan", "toy", "--threads", "1", "--steps", "1", "--repeats", "1", "--timer",
                               "cpu", "--quick", "--compare-gemm", "-o", str(out)]) == 0
    text = out.read_text()
    assert "--plan toy" in text and "cpu time" in text and "GFLOP/s: torch.mm" in text
    # the same-run arms: vanilla, the snake network, and the snake network with torch.mm GEMMs
    assert "| vanilla | " in text and "| snake | " in text and "| snake, torch.mm GEMMs | " in text
    # one section per DSCBlock of the default placement (encoder and decoder stage 2), every part listed
    assert text.count("## `") == 2
    for part in ("plain branch", "swing branches", "C `sample`", "C `gather_backward`", "C `scatter`",
                 "snake GEMMs", "fusion"):
        assert text.count(part) == 2


def test_forward_macs_known_answers():
    from nnunet_tubeconv.blocks import DSConv

    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    assert profile_snake.forward_macs(torch, conv, torch.randn(1, 2, 5, 5)) == 3 * 25 * 2 * 9
    up = torch.nn.ConvTranspose2d(4, 2, 2, stride=2)
    assert profile_snake.forward_macs(torch, up, torch.randn(1, 4, 3, 3)) == 4 * 9 * 2 * 4
    # a DSConv: K * C_in * C_out per position, plus its swing conv (C_in -> K - 1 channels, 3x3)
    snake = DSConv(torch.nn.Conv2d, 2, 3, kernel_size=5, axis=0)
    assert profile_snake.forward_macs(torch, snake, torch.randn(1, 2, 6, 6)) == 36 * 3 * 2 * 5 + 36 * 4 * 2 * 9

"""export-onnx, package (+ the bundle's predict.py) and show-snakes on model folders trained through nnU-Net's own
entry points.

Fixture, as a user would do it: a tiny synthetic 2D data set, ``nnUNetv2_plan_and_preprocess``, a narrower copy of
the plans (same preprocessed data), and a user trainer file in their own ``nnUNet_extTrainer`` folder with shortened
subclasses (1 epoch of 2 iterations, 1 validation iteration) of ``nnUNetTrainerDSConv`` and of vanilla
``nnUNetTrainer``, each trained for fold 0 with ``nnUNetv2_train -device cpu``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from support import e2e
from support.nnunet import run_console

from nnunet_tubeconv import __version__

DATASET_ID = 978
PLANS = "nnUNetPlansDeployTiny"
DSC_TRAINER = "nnUNetTrainerDSConvDeployTest"
VANILLA_TRAINER = "nnUNetTrainerVanillaDeployTest"

USER_TRAINERS = textwrap.dedent(
    '''
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_tubeconv.trainers import nnUNetTrainerDSConv


    def _shorten(trainer):
        trainer.num_epochs = 1
        trainer.num_iterations_per_epoch = 2
        trainer.num_val_iterations_per_epoch = 1


    class nnUNetTrainerDSConvDeployTest(nnUNetTrainerDSConv):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            _shorten(self)


    class nnUNetTrainerVanillaDeployTest(nnUNetTrainer):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            _shorten(self)
    '''
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    ws = e2e.planned_synthetic_dataset(tmp_path_factory.mktemp("deploy"), DATASET_ID, (64, 64), 5, ("2d",),
                                       name="DeployTubes")
    e2e.add_user_trainers(ws, "tubeconv_deploy_test_trainers.py", USER_TRAINERS)
    e2e.narrow_plans(ws["pre"], PLANS)
    results = Path(ws["env"]["nnUNet_results"]) / ws["dataset"]
    folders = {}
    for key, trainer in (("dsconv", DSC_TRAINER), ("vanilla", VANILLA_TRAINER)):
        run_console(["nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", trainer, "-p", PLANS, "-device", "cpu"],
                    ws["env"], log=ws["log"])
        folders[key] = results / f"{trainer}__{PLANS}__2d"
    return {**ws, "results": results, **folders}


@pytest.fixture
def user_env(ws, monkeypatch):
    """In-process calls: the user's trainer folder on nnUNet_extTrainer (ours is added by the deploy code)."""
    monkeypatch.setenv("nnUNet_extTrainer", str(ws["user"]))


def _case(ws, i: int) -> Path:
    return ws["raw"] / "imagesTr" / f"tubes_{i:03d}_0000.nii.gz"


# ---------------------------------------------------------------------------------------------------------------
# export-onnx


def test_export_onnx_of_a_trained_dsconv_folder(ws, tmp_path):
    from nnunet_tubeconv.deploy.onnx_export import read_metadata

    out = tmp_path / "model.onnx"
    r = run_console(["nnunet-tubeconv", "export-onnx", ws["dsconv"], "-f", "0", "-o", out], ws["env"])
    # the command compares onnxruntime with the PyTorch network nnU-Net's loader builds, at two input sizes
    errors = [float(e) for e in re.findall(r"max relative error ([0-9.e+-]+)", r.stdout)]
    assert len(errors) == 2 and max(errors) <= 1e-4, r.stdout
    meta = read_metadata(out)
    plans = json.loads((ws["dsconv"] / "plans.json").read_text())["configurations"]["2d"]
    dataset = json.loads((ws["dsconv"] / "dataset.json").read_text())
    assert meta["configuration"] == "2d" and meta["trainer"] == DSC_TRAINER and meta["fold"] == "0"
    assert json.loads(meta["patch_size"]) == plans["patch_size"]
    assert json.loads(meta["spacing"]) == plans["spacing"]
    assert json.loads(meta["normalization_schemes"]) == plans["normalization_schemes"]
    assert json.loads(meta["channel_names"]) == dataset["channel_names"]
    assert json.loads(meta["labels"]) == dataset["labels"]
    assert meta["opset"] == "17" and meta["nnunet_tubeconv_version"] == __version__
    assert meta["network_class"] == "nnunet_tubeconv.architectures.unet.TubeUNet"


def test_export_onnx_from_dataset_folder_with_tr_p_c(ws, user_env, tmp_path, capsys):
    from nnunet_tubeconv.cli import main
    from nnunet_tubeconv.deploy.onnx_export import read_metadata

    out = tmp_path / "vanilla.onnx"
    assert main(["export-onnx", str(ws["results"]), "-tr", VANILLA_TRAINER, "-p", PLANS, "-c", "2d",
                 "-o", str(out)]) == 0
    assert "max relative error" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta["trainer"] == VANILLA_TRAINER
    assert meta["network_class"].endswith("PlainConvUNet")


def test_export_onnx_refuses_bad_model_folders(ws, user_env, tmp_path, capsys):
    from nnunet_tubeconv.cli import main

    cases = [
        ([tmp_path / "missing"], "does not exist"),
        ([ws["results"]], "several trained models"),
        ([ws["dsconv"], "-c", "3d_fullres"], "was trained with configuration '2d'"),
        ([ws["dsconv"], "-f", "3"], "no fold_3"),
    ]
    for args, message in cases:
        code = main(["export-onnx", *map(str, args), "-o", str(tmp_path / "x.onnx")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)
    assert not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------------------------------------------------------
# package + predict.py


def test_package_bundle_predicts_like_the_input(ws, tmp_path):
    import SimpleITK as sitk

    bundle = tmp_path / "bundle"
    run_console(["nnunet-tubeconv", "package", ws["dsconv"], "-o", bundle], ws["env"])
    for name in ("model.zip", "predict.py", "requirements.txt", "Dockerfile", "README.md", "bundle.json"):
        assert (bundle / name).is_file(), name
    pins = dict(line.split("==") for line in (bundle / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["nnunet-tubeconv"] == __version__ and "nnunetv2" in pins and "torch" in pins
    assert list((bundle / "wheels").glob(f"nnunet_tubeconv-{__version__}-*.whl"))
    assert (bundle / "trainers" / "tubeconv_deploy_test_trainers.py").is_file()  # the user's trainer travels along
    docker = (bundle / "Dockerfile").read_text()
    assert 'CMD ["/input", "/output"]' in docker and "predict.py" in docker and "--find-links ./wheels" in docker
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["trainer"] == DSC_TRAINER and info["folds"] == [0] and info["configuration"] == "2d"

    # inputs: an nnU-Net-named NIfTI case and a Grand-Challenge-like .mha in a subfolder, with distinct geometry
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shutil.copy(_case(ws, 1), inp / "tubes_001_0000.nii.gz")
    img = sitk.ReadImage(str(_case(ws, 2)))
    img.SetSpacing((0.7, 1.3))
    img.SetOrigin((12.5, -4.0))
    (inp / "images" / "fundus").mkdir(parents=True)
    sitk.WriteImage(img, str(inp / "images" / "fundus" / "b7e1.mha"))
    # no nnU-Net variables at all: predict.py must set up everything itself
    env = {k: v for k, v in ws["env"].items() if not k.startswith("nnUNet")}
    r = subprocess.run([sys.executable, str(bundle / "predict.py"), str(inp), str(out), "--device", "cpu",
                        "--disable-tta"], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["b7e1.mha", "tubes_001.nii.gz"]
    for src, pred in ((inp / "tubes_001_0000.nii.gz", out / "tubes_001.nii.gz"),
                      (inp / "images" / "fundus" / "b7e1.mha", out / "b7e1.mha")):
        a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(pred))
        assert b.GetSize() == a.GetSize()
        np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing())
        np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin())
        np.testing.assert_allclose(b.GetDirection(), a.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(b)).tolist()) <= {0, 1}


# ---------------------------------------------------------------------------------------------------------------
# show-snakes


def test_show_snakes_cli_writes_a_picture(ws, tmp_path):
    import matplotlib.image as mpimg

    out = tmp_path / "snakes.png"
    r = run_console(["nnunet-tubeconv", "show-snakes", ws["dsconv"], _case(ws, 0), "-o", out, "--points", "12"],
                    ws["env"])
    assert re.search(r"DSConv layer\(s\) at stage \d", r.stdout)
    img = mpimg.imread(out)[..., :3]
    assert img.shape[0] > 100 and img.std() > 0.05  # not blank
    # the snakes' colours are there (morph axis 0 red, axis 1 cyan)
    red = (img[..., 0] > 0.9) & (img[..., 1] < 0.4) & (img[..., 2] < 0.35)
    cyan = (img[..., 0] < 0.2) & (img[..., 1] > 0.6) & (img[..., 2] > 0.9)
    assert red.sum() > 20 and cyan.sum() > 20


def test_show_snakes_plots_the_hooked_layers_snake_coordinates(ws, user_env, tmp_path):
    import torch

    from nnunet_tubeconv.deploy.model_folder import load_trained_model, resolve_model_folder
    from nnunet_tubeconv.deploy.snakes import cumulative_strides, dsconv_layers, show_snakes

    model = load_trained_model(resolve_model_folder(ws["dsconv"]))
    result = show_snakes(model, [str(_case(ws, 3))], tmp_path / "s.png", points=15)
    assert result.path.is_file()
    assert result.stage == min(result.stages_available)  # default: the finest stage with snakes
    scale = cumulative_strides(model.configuration_manager.network_arch_init_kwargs["strides"], 2)[result.stage]
    layers = dict(dsconv_layers(model.network))
    assert {layer.name for layer in result.layers} <= set(layers) and len(result.layers) >= 2
    assert {layer.morph_axis for layer in result.layers} == {0, 1}
    for drawn in result.layers:
        captured: dict = {}
        h = layers[drawn.name].register_forward_pre_hook(
            lambda m, a, store=captured: store.setdefault("x", a[0].detach())
        )
        try:
            with torch.no_grad():
                logits = model.network(result.network_input)
                coords = layers[drawn.name].snake_coordinates(captured["x"])[0]  # (K, d, H, W)
        finally:
            h.remove()
        expected = torch.stack([coords[:, :, r, c] for r, c in drawn.positions]).numpy()
        np.testing.assert_array_equal(drawn.coords, expected)
        assert drawn.coords.shape == (15, layers[drawn.name].kernel_size, 2)
        np.testing.assert_allclose(drawn.plotted, drawn.display, atol=1e-9)  # what the figure holds
        # a 2D image with spacing 1 and nothing to crop: displayed pixel = stage voxel x the stage's stride
        np.testing.assert_allclose(drawn.display, drawn.coords * np.array(scale), atol=1e-5)
        if result.selection == "predicted foreground":  # each position's stage cell holds predicted foreground
            fg = logits[0].argmax(0).numpy() > 0
            assert all(fg[r * scale[0]:(r + 1) * scale[0], c * scale[1]:(c + 1) * scale[1]].any()
                       for r, c in drawn.positions)


def test_show_snakes_refuses_a_model_without_dsconv(ws, user_env, tmp_path, capsys):
    from nnunet_tubeconv.cli import main

    assert main(["show-snakes", str(ws["vanilla"]), str(_case(ws, 0)), "-o", str(tmp_path / "v.png")]) == 2
    assert "no DSConv layer" in capsys.readouterr().err
    assert not (tmp_path / "v.png").exists()


def test_model_folder_without_our_trainers_on_the_path_still_loads(ws, tmp_path, monkeypatch):
    """The deploy loader adds this package's trainer folder itself; only the user's own folder must be set."""
    from nnunet_tubeconv.deploy.model_folder import ModelFolderError, load_trained_model, resolve_model_folder

    monkeypatch.setenv("nnUNet_extTrainer", str(ws["user"]))
    model = load_trained_model(resolve_model_folder(ws["dsconv"]))
    assert model.trainer_name == DSC_TRAINER and os.environ["nnUNet_extTrainer"] == str(ws["user"])
    monkeypatch.delenv("nnUNet_extTrainer")
    with pytest.raises(ModelFolderError, match="nnUNet_extTrainer"):
        load_trained_model(resolve_model_folder(ws["dsconv"]))

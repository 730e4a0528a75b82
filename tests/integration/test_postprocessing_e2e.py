"""Postprocessing end to end on a model folder trained through nnU-Net's entry points: ``postprocess determine`` on
its cross-validation predictions, stock ``nnUNetv2_apply_postprocessing`` applying the pkl it wrote (our function
unpickled by reference in nnU-Net's own worker processes), ``postprocess apply`` giving the same files, and the
challenge bundle's ``predict.py`` applying the model folder's postprocessing.

Fixture, as a user would do it: a tiny synthetic 2D data set, ``nnUNetv2_plan_and_preprocess``, a narrower copy of
the plans, and a user trainer file with a shortened vanilla ``nnUNetTrainer`` (1 epoch of 2 iterations), trained for
fold 0 with ``nnUNetv2_train -device cpu`` (which writes ``fold_0/validation``).

Such a network's predictions may or may not hold fragments, so the determination on them is checked for what it
wrote; a copy of the model folder whose validation predictions are the references plus one-voxel speckles (nnU-Net's
own files, geometry and splits) gives a determination whose answer is known: a step that removes the speckles.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from support import e2e
from support.nnunet import run_console

DATASET_ID = 974
PLANS = "nnUNetPlansPostprocessingTiny"
TRAINER = "nnUNetTrainerPostprocessingTest"

USER_TRAINERS = textwrap.dedent(
    '''
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


    class nnUNetTrainerPostprocessingTest(nnUNetTrainer):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 1
            self.num_iterations_per_epoch = 2
            self.num_val_iterations_per_epoch = 1

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            rot, dummy_2d, initial_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            self.inference_allowed_mirroring_axes = None
            return rot, dummy_2d, initial_size, None
    '''
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    ws = e2e.planned_synthetic_dataset(tmp_path_factory.mktemp("postprocessing"), DATASET_ID, (64, 64), 5, ("2d",),
                                       name="PPTubes")
    e2e.add_user_trainers(ws, "tubeconv_postprocessing_test_trainers.py", USER_TRAINERS)
    e2e.narrow_plans(ws["pre"], PLANS)
    run_console(["nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"], ws["env"],
                log=ws["log"])
    results = Path(ws["env"]["nnUNet_results"]) / ws["dataset"]
    return {**ws, "results": results, "model": results / f"{TRAINER}__{PLANS}__2d"}


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _speckled_copy(ws: dict) -> tuple[Path, int]:
    """A copy of the model folder (plans.json, dataset.json, fold_0/validation) whose predictions are the references
    plus one-voxel speckles away from any foreground; returns it and the number of speckles."""
    import SimpleITK as sitk

    src = ws["model"]
    dst = ws["results"] / f"{TRAINER}Speckled__{PLANS}__2d"
    (dst / "fold_0" / "validation").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(src / name, dst / name)
    n = 0
    for pred in sorted((src / "fold_0" / "validation").glob("*.nii.gz")):
        ref_img = sitk.ReadImage(str(ws["pre"] / "gt_segmentations" / pred.name))
        ref = sitk.GetArrayFromImage(ref_img)
        seg = ref.copy()
        free = ref == 0
        for r in range(2, seg.shape[-2] - 2, 6):
            for c in range(2, seg.shape[-1] - 2, 6):
                if free[..., r - 1:r + 2, c - 1:c + 2].all():
                    seg[..., r, c] = 1
                    n += 1
        out = sitk.GetImageFromArray(seg)
        out.CopyInformation(ref_img)
        sitk.WriteImage(out, str(dst / "fold_0" / "validation" / pred.name))
    return dst, n


def test_stock_nnunet_applies_what_determine_wrote(ws, tmp_path):
    model = ws["model"]
    splits = json.loads((ws["pre"] / "splits_final.json").read_text())

    # 1. on the trained network's own cross-validation predictions (fold 0: the only one trained)
    run_console(["nnunet-tubeconv", "postprocess", "determine", model, "-f", "0"], ws["env"], log=ws["log"])
    out = model / "postprocessing_tubes"
    doc = json.loads((out / "postprocessing.json").read_text())
    assert doc["folds"] == ["0"] and doc["cases"]["0"] == sorted(splits[0]["val"])
    assert doc["reference_folder"] == str(ws["pre"] / "gt_segmentations")
    lab = doc["labels"][0]
    passing = [r for r in lab["scan"] if r["passed"]]
    chosen = next(r for r in lab["scan"] if r["chosen"])
    assert chosen["passed"] and chosen["betti0_error"] == min(r["betti0_error"] for r in passing)
    with open(out / "postprocessing.pkl", "rb") as f:
        fns, kwargs = pickle.load(f)
    assert len(fns) == (1 if lab["chosen_voxels"] > 0 else 0)
    assert not list(model.glob("crossval_results_folds_*"))  # nnU-Net's own folder untouched

    # 2. a known answer on nnU-Net's own files: references + speckles -> a step that removes the speckles
    speckled, n = _speckled_copy(ws)
    assert n >= 10
    pp_dir = tmp_path / "speckled_pp"
    run_console(["nnunet-tubeconv", "postprocess", "determine", speckled, "-f", "0", "-o", pp_dir,
                 "--tolerance", "dice=0.05", "cldice=0.05"], ws["env"], log=ws["log"])
    pkl = pp_dir / "postprocessing.pkl"
    with open(pkl, "rb") as f:
        fns, kwargs = pickle.load(f)
    assert [f"{fn.__module__}.{fn.__name__}" for fn in fns] == [
        "nnunet_tubeconv.postprocessing.components.remove_small_components"]
    assert kwargs[0]["min_size"] >= 5 and kwargs[0]["labels_or_regions"] == 1

    # 3. stock nnU-Net applies it (in its spawned worker processes), and postprocess apply writes the same files
    val = speckled / "fold_0" / "validation"
    stock, ours = tmp_path / "stock", tmp_path / "ours"
    run_console(["nnUNetv2_apply_postprocessing", "-i", val, "-o", stock, "-pp_pkl_file", pkl,
                 "-plans_json", speckled / "plans.json", "-dataset_json", speckled / "dataset.json", "-np", "1"],
                ws["env"], log=ws["log"])
    run_console(["nnunet-tubeconv", "postprocess", "apply", "-i", val, "-o", ours, "-pp", pkl], ws["env"],
                log=ws["log"])
    names = sorted(p.name for p in val.glob("*.nii.gz"))
    assert sorted(p.name for p in stock.glob("*.nii.gz")) == names == sorted(p.name for p in ours.glob("*.nii.gz"))
    for name in names:
        ref = _read(ws["pre"] / "gt_segmentations" / name)
        a, b = _read(stock / name), _read(ours / name)
        np.testing.assert_array_equal(a, b)
        assert (a[ref == 0] == 0).all()  # every speckle gone
        assert (_read(val / name) != a).any()

    # 4. the real model folder's pkl through stock nnU-Net too (whatever it holds)
    run_console(["nnUNetv2_apply_postprocessing", "-i", model / "fold_0" / "validation", "-o", tmp_path / "real",
                 "-pp_pkl_file", out / "postprocessing.pkl", "-plans_json", model / "plans.json",
                 "-dataset_json", model / "dataset.json", "-np", "1"], ws["env"], log=ws["log"])
    assert sorted(p.name for p in (tmp_path / "real").glob("*.nii.gz")) == sorted(
        p.name for p in (model / "fold_0" / "validation").glob("*.nii.gz"))


def test_the_bundle_applies_the_model_folders_postprocessing(ws, tmp_path):
    from nnunet_tubeconv.postprocessing.components import remove_small_components
    from nnunet_tubeconv.postprocessing.determine import write_postprocessing

    model = ws["model"]
    # a step whose effect is known: remove every vessel component below 10^6 px (all of them)
    kwargs = {"labels_or_regions": 1, "min_size": 1e6, "voxel_size": [999.0, 1.0, 1.0], "connectivity": "full",
              "background_label": 0}
    pp = tmp_path / "pp_store"  # the determined postprocessing, put back afterwards
    if (model / "postprocessing_tubes").exists():
        shutil.copytree(model / "postprocessing_tubes", pp)
    write_postprocessing(model / "postprocessing_tubes", [remove_small_components], [kwargs], {"note": "test"})
    try:
        bundle = tmp_path / "bundle"
        run_console(["nnunet-tubeconv", "package", model, "-o", bundle, "--no-wheel"], ws["env"], log=ws["log"])
        info = json.loads((bundle / "bundle.json").read_text())
        assert info["postprocessing"]["file"] == "postprocessing.pkl"
        assert info["postprocessing"]["steps"][0]["kwargs"]["min_size"] == 1e6
        assert "COPY postprocessing.pkl postprocessing.json ./" in (bundle / "Dockerfile").read_text()
        inp = tmp_path / "in"
        inp.mkdir()
        shutil.copy(ws["raw"] / "imagesTr" / "tubes_001_0000.nii.gz", inp)
        env = {k: v for k, v in ws["env"].items() if not k.startswith("nnUNet")}
        outs = {}
        for flag in ([], ["--no-postprocessing"]):
            out = tmp_path / ("raw" if flag else "pp")
            r = subprocess.run([sys.executable, str(bundle / "predict.py"), str(inp), str(out), "--device", "cpu",
                                "--disable-tta", *flag], env=env, capture_output=True, text=True, timeout=600,
                               check=False)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            assert ("postprocessing: 1 step(s)" in r.stdout) == (not flag)
            outs[bool(flag)] = _read(out / "tubes_001.nii.gz")
        assert not outs[False].any()  # postprocessed: every component was below the size
        np.testing.assert_array_equal(outs[False], remove_small_components(outs[True], **kwargs))
    finally:
        shutil.rmtree(model / "postprocessing_tubes")
        if pp.exists():
            shutil.copytree(pp, model / "postprocessing_tubes")

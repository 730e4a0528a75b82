"""``nnunet-tubeconv env`` and ``nnunet-tubeconv doctor``: the line they print, what they catch, how they say it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import textwrap

import pytest
from support.nnunet import console_script, nnunet_folders
from support.plans import TINY_DATASET_JSON, tiny_plans, tiny_resenc_plans

from nnunet_tubeconv.cli import main
from nnunet_tubeconv.doctor import _parse_version, check_nnunet_version, export_line
from nnunet_tubeconv.trainers import TRAINERS, trainer_folder

OURS = str(trainer_folder())


@pytest.fixture
def good_env(tmp_path, monkeypatch):
    """Everything set as the README says."""
    for k in list(os.environ):
        if k.startswith("nnUNet"):
            monkeypatch.delenv(k)
    for var, path in nnunet_folders(tmp_path).items():
        monkeypatch.setenv(var, path)
    monkeypatch.setenv("nnUNet_extTrainer", OURS)
    return tmp_path


def _doctor(capsys, *args: str) -> tuple[int, str]:
    rc = main(["doctor", *args])
    return rc, capsys.readouterr().out


def test_env_prints_the_export_line(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    assert main(["env"]) == 0
    assert capsys.readouterr().out == f"export nnUNet_extTrainer={shlex.quote(OURS)}\n"
    assert main(["env", "--path"]) == 0
    assert capsys.readouterr().out.strip() == OURS


def test_env_keeps_other_folders_and_is_idempotent(tmp_path, monkeypatch, capsys):
    other = str(tmp_path / "mine")
    monkeypatch.setenv("nnUNet_extTrainer", other)
    main(["env"])
    line = capsys.readouterr().out.strip()
    assert line == f"export nnUNet_extTrainer={shlex.quote(OURS + os.pathsep + other)}"
    monkeypatch.setenv("nnUNet_extTrainer", OURS + os.pathsep + other)
    main(["env"])
    assert capsys.readouterr().out.strip() == line
    main(["env", "--replace"])
    assert capsys.readouterr().out.strip() == f"export nnUNet_extTrainer={shlex.quote(OURS)}"


def test_env_line_works_in_a_shell(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    script = f'eval "$({shlex.quote(console_script("nnunet-tubeconv"))} env)"; printf %s "$nnUNet_extTrainer"'
    r = subprocess.run(["bash", "-c", script], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == OURS


def test_export_line_other_shells():
    assert export_line("/a b", "fish") == "set -gx nnUNet_extTrainer '/a b'"
    assert export_line("C:\\x", "powershell") == "$env:nnUNet_extTrainer = 'C:\\x'"
    assert export_line("C:\\x", "cmd") == 'set "nnUNet_extTrainer=C:\\x"'
    with pytest.raises(ValueError, match="choose one of"):
        export_line("/a", "tcsh")


@pytest.mark.parametrize(
    ("version", "status"),
    [("2.8.1", "ok"), ("2.8.0rc1", "ok"), ("2.8", "ok"), ("2.9.0", "fail"), ("2.7.3", "fail"), ("3.0", "fail")],
)
def test_nnunet_version_check(version, status):
    c = check_nnunet_version(version)
    assert c.status == status
    if status == "fail":
        assert ">=2.8,<2.9" in c.fix


def test_parse_version():
    assert _parse_version("2.8.1") == (2, 8, 1)
    assert _parse_version("2.10.0.post1") == (2, 10, 0)
    assert _parse_version("2.8.0rc1") == (2, 8, 0)


def test_doctor_all_good(good_env, capsys):
    rc, out = _doctor(capsys)
    assert rc == 0, out
    for name in TRAINERS:
        assert f"[ OK ] trainer {name} found in {OURS}" in out
    assert "[FAIL]" not in out
    assert "nnunetv2 2.8" in out
    from nnunet_tubeconv.blocks.dsconv import cpu_backend

    status = cpu_backend.status()  # what this machine really runs: the doctor must say exactly that, with its reason
    if status.startswith("native: "):
        assert f"[ OK ] DSConv CPU kernels: {status[len('native: '):]}" in out
        assert "DSConv runs its PyTorch implementation" not in out
    else:
        assert f"[WARN] DSConv runs its PyTorch implementation on CPU ({status[len('PyTorch fallback: '):]})" in out


def test_doctor_says_when_dsconv_falls_back(good_env, monkeypatch, capsys):
    from nnunet_tubeconv.blocks.dsconv import cpu_backend

    monkeypatch.setattr(cpu_backend, "_state", {})
    monkeypatch.setenv("NNUNET_TUBECONV_NATIVE", "0")
    rc, out = _doctor(capsys)
    assert rc == 0, out  # a warning, not a failure: the fallback works
    assert "DSConv runs its PyTorch implementation on CPU (disabled by NNUNET_TUBECONV_NATIVE=0)" in out


@pytest.mark.parametrize("var", ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"])
def test_doctor_missing_path_variable(good_env, monkeypatch, capsys, var):
    monkeypatch.delenv(var)
    rc, out = _doctor(capsys)
    assert rc == 1
    assert f"[FAIL] {var} is not set" in out
    assert f"fix: export {var}=" in out


def test_doctor_path_variable_pointing_nowhere(good_env, monkeypatch, capsys):
    missing = good_env / "nope"
    monkeypatch.setenv("nnUNet_results", str(missing))
    rc, out = _doctor(capsys)
    assert rc == 1
    assert f"nnUNet_results={missing} does not exist" in out and f"mkdir -p {missing}" in out


def test_doctor_ext_trainer_unset(good_env, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_extTrainer")
    rc, out = _doctor(capsys)
    assert rc == 1
    assert "[FAIL] nnUNet_extTrainer is not set" in out
    assert f"export nnUNet_extTrainer={shlex.quote(OURS)}" in out


def test_doctor_ext_trainer_without_our_folder(good_env, monkeypatch, capsys):
    mine = good_env / "mine"
    mine.mkdir()
    monkeypatch.setenv("nnUNet_extTrainer", str(mine))
    rc, out = _doctor(capsys)
    assert rc == 1
    assert f"does not include the trainer folder {OURS}" in out
    assert "nnU-Net cannot find trainer 'nnUNetTrainerDSConv'" in out


def test_doctor_wrong_trainer_name(good_env, capsys):
    rc, out = _doctor(capsys, "-tr", "nnUNetTrainerDSconv")
    assert rc == 1
    assert "[FAIL] nnU-Net cannot find trainer 'nnUNetTrainerDSconv'" in out
    assert "Traceback" not in out


def test_doctor_finds_a_users_subclass_and_reports_a_broken_module(good_env, monkeypatch, capsys):
    mine = good_env / "mine"
    mine.mkdir()
    (mine / "my_fast.py").write_text(
        textwrap.dedent(
            """
            from nnunet_tubeconv.trainers import nnUNetTrainerScSE

            class nnUNetTrainerScSEFast(nnUNetTrainerScSE):
                pass
            """
        )
    )
    monkeypatch.setenv("nnUNet_extTrainer", OURS + os.pathsep + str(mine))
    rc, out = _doctor(capsys, "-tr", "nnUNetTrainerScSEFast")
    assert rc == 0, out
    assert f"trainer nnUNetTrainerScSEFast found in {mine}" in out

    (mine / "my_broken.py").write_text("import a_module_that_is_not_installed\n")
    rc, out = _doctor(capsys, "-tr", "nnUNetTrainerNotThere")
    assert rc == 1
    assert "ModuleNotFoundError" in out and "a_module_that_is_not_installed" in out
    assert "Traceback" not in out


def _write_preprocessed(root, plans: dict, dataset_id: int = 999, dataset_json: dict = TINY_DATASET_JSON) -> str:
    name = f"Dataset{dataset_id:03d}_Test"
    folder = root / "nnUNet_preprocessed" / name
    folder.mkdir(parents=True, exist_ok=True)
    plans = {**plans, "dataset_name": name}
    (folder / f"{plans.get('plans_name', 'nnUNetPlans')}.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return name


def test_doctor_checks_plans(good_env, capsys):
    name = _write_preprocessed(good_env, tiny_plans())
    rc, out = _doctor(capsys, "-d", "999", "-tr", "nnUNetTrainerDSConv", "nnUNetTrainerTubeConv")
    assert rc == 0, out
    for t in ("nnUNetTrainerDSConv", "nnUNetTrainerTubeConv"):
        for c in ("2d", "3d_fullres"):
            assert f"[ OK ] {t} builds TubeUNet for {name} nnUNetPlans {c}: 1 input channel(s), 2 output(s)" in out


def test_doctor_checks_resenc_plans(good_env, capsys):
    name = _write_preprocessed(good_env, tiny_resenc_plans())
    rc, out = _doctor(capsys, "-d", "999", "-p", "nnUNetResEncUNetMPlans", "-c", "3d_fullres", "-tr",
                      "nnUNetTrainerDSConv", "nnUNetTrainerSkeletonRecall")
    assert rc == 0, out
    assert f"[ OK ] nnUNetTrainerDSConv builds TubeResEncUNet for {name} nnUNetResEncUNetMPlans 3d_fullres" in out
    assert f"[ OK ] nnUNetTrainerSkeletonRecall builds ResidualEncoderUNet for {name} nnUNetResEncUNetMPlans" in out


def test_doctor_checks_the_loss_trainers_and_wide(good_env, capsys):
    ignore = {**TINY_DATASET_JSON, "labels": {"background": 0, "vessel": 1, "ignore": 2}}
    name = _write_preprocessed(good_env, tiny_plans(), dataset_json=ignore)
    trainers = ("nnUNetTrainerSkeletonRecall", "nnUNetTrainerDSConvSkeletonRecall", "nnUNetTrainerWide",
                "nnUNetTrainerClDice")
    rc, out = _doctor(capsys, "-d", "999", "-c", "2d", "-tr", *trainers)
    assert rc == 1
    assert f"[ OK ] nnUNetTrainerSkeletonRecall builds PlainConvUNet for {name} nnUNetPlans 2d" in out
    assert f"[ OK ] nnUNetTrainerDSConvSkeletonRecall builds TubeUNet for {name} nnUNetPlans 2d" in out
    assert f"[ OK ] nnUNetTrainerWide builds PlainConvUNet for {name} nnUNetPlans 2d" in out
    line = next(x for x in out.splitlines() if x.startswith("[FAIL] nnUNetTrainerClDice"))
    assert "ignore label" in line and "nnUNetTrainerSkeletonRecall" in line


def test_doctor_refuses_plans_of_another_network_with_a_message(good_env, capsys):
    plans = tiny_plans()
    entry = plans["configurations"]["3d_fullres"]["architecture"]
    entry["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualUNet"
    _write_preprocessed(good_env, plans)
    rc, out = _doctor(capsys, "-d", "999", "-tr", "nnUNetTrainerDSConv", "-c", "3d_fullres")
    assert rc == 1
    line = next(x for x in out.splitlines() if x.startswith("[FAIL] nnUNetTrainerDSConv"))
    assert "ResidualUNet" in line and "PlainConvUNet" in line and "ResidualEncoderUNet" in line
    assert "Traceback" not in out


def test_doctor_unknown_dataset_and_configuration(good_env, capsys):
    rc, out = _doctor(capsys, "-d", "998")
    assert rc == 1 and "[FAIL] data set '998': Could not find a dataset with the ID 998" in out
    _write_preprocessed(good_env, tiny_plans())
    rc, out = _doctor(capsys, "-d", "999", "-c", "3d_lowres")
    assert rc == 1 and "has no configuration '3d_lowres'" in out


def test_doctor_console_script_exit_code_and_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    r = subprocess.run(
        [console_script("nnunet-tubeconv"), "doctor", "-tr", "nnUNetTrainerDSConv"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 1
    assert "nnUNet_results is not set" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr

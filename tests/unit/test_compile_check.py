"""``benchmarks/studies/compile_check/compile_check.py``: the inductor-on-every-network command, run here with
``aot_eager`` (seconds) on one trainer: the comparison, the report, resuming, and that a compiled step that differs
from eager fails."""

from __future__ import annotations

import json

import pytest
import torch

from nnunet_tubeconv.benchmarks.studies.compile_check import compile_check


def test_report_and_resume(tmp_path, monkeypatch, capsys):
    rc = compile_check.main(["-o", str(tmp_path), "--backend", "aot_eager", "--trainers", "nnUNetTrainerDSConv"])
    assert rc == 0
    report = json.loads((tmp_path / "compile_check_aot_eager.json").read_text())
    (row,) = report["results"]
    assert row["trainer"] == "nnUNetTrainerDSConv" and row["passed"] is True
    assert row["max_grad_diff"] <= 1e-4 and row["parameters"] > 10 and row["outputs"] == 2  # deep supervision, 3 stages
    assert "| nnUNetTrainerDSConv | yes |" in (tmp_path / "compile_check_aot_eager.md").read_text()

    def must_not_run(*a, **k):
        raise AssertionError("a finished network was compiled again")

    monkeypatch.setattr(compile_check, "check_trainer", must_not_run)
    assert compile_check.main(["-o", str(tmp_path), "--backend", "aot_eager", "--trainers",
                               "nnUNetTrainerDSConv"]) == 0
    assert "kept from the earlier run" in capsys.readouterr().out


def test_a_compiled_step_that_differs_from_eager_fails():
    def off_by_one_percent(gm, example_inputs):  # a "compiler" whose outputs are 1% too large
        def run(*args):
            return [o * 1.01 if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in gm(*args)]

        return run

    row = compile_check.check_trainer("nnUNetTrainer", backend=off_by_one_percent)
    assert row["passed"] is False and row["max_output_diff"] > 1e-3


def test_a_network_that_fails_to_compile_is_reported(tmp_path, monkeypatch):
    def broken(trainer, backend):
        raise RuntimeError("inductor: C++ compile failed")

    monkeypatch.setattr(compile_check, "check_trainer", broken)
    rc = compile_check.main(["-o", str(tmp_path), "--backend", "aot_eager", "--trainers", "nnUNetTrainerScSE"])
    assert rc == 1
    assert "failed to compile" in (tmp_path / "compile_check_aot_eager.md").read_text()


def test_unknown_trainer_is_refused_with_the_allowed_list(capsys):
    with pytest.raises(SystemExit):
        compile_check.main(["-o", "unused", "--trainers", "nnUNetTrainerNope"])
    err = capsys.readouterr().err
    assert "nnUNetTrainerNope" in err and "nnUNetTrainerDSConv" in err


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "report.md"
    f.write_text("keep me")
    with pytest.raises(SystemExit):
        compile_check.main(["-o", str(f), "--backend", "aot_eager", "--trainers", "nnUNetTrainer"])
    assert "is not a folder" in capsys.readouterr().err and f.read_text() == "keep me"

"""``nnunet-tubeconv gpu-check`` (benchmarks/perf/gpu_check.py): the clear refusal without CUDA, the whole report path
on the CPU (``--device cpu --quick``, Triton kernels under the interpreter), and the target verdicts on known
numbers."""

import json

import pytest
import torch

from nnunet_tubeconv import cli
from nnunet_tubeconv.benchmarks.perf import gpu_check
from nnunet_tubeconv.blocks.dsconv import triton_backend

pytest.importorskip("triton", reason="Triton is not importable here")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_with_a_clear_message(tmp_path, capsys):
    assert cli.main(["gpu-check", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "gpu-check: error: gpu-check needs a CUDA GPU" in err and "--device cpu --quick" in err
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("argv,match", [(["--steps", "kernels,bogus"], "--steps must be a comma list"),
                                        (["--device", "tpu"], "--device must be")])
def test_bad_arguments_exit_2(tmp_path, capsys, argv, match):
    assert cli.main(["gpu-check", "-o", str(tmp_path), "--device", "cpu", *argv]) == 2
    assert match in capsys.readouterr().err


def test_cpu_quick_report_path(tmp_path, monkeypatch):
    """The whole report path on the CPU at tiny sizes (calibrate-memory's own run takes minutes on a CPU even with
    --quick, so its step is left out here; its verdict is tested below on known numbers)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "results"
    rc = cli.main(["gpu-check", "-o", str(out), "--device", "cpu", "--quick", "--steps", "kernels,blocks,train"])
    assert rc == 0
    report = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["triton"] != ""
    assert report["counts"] is False and "Not a GPU measurement" in md
    kc = report["steps"]["kernel_check"]
    assert kc["ok"] and kc["result"]["rows"]
    assert {r["dtype"] for r in kc["result"]["rows"]} == {"float32", "bfloat16", "float16"}
    assert all(r["pass"] and r["dispatch"] == "pytorch" for r in kc["result"]["rows"])  # CPU: never Triton
    assert report["steps"]["calibration"].get("skipped") and "not run (--steps)" in md
    for name in ("bench_blocks", "bench_train"):
        assert report["steps"][name]["ok"] and (out / gpu_check.FILES[name]).exists()
    targets = {t["key"]: t for t in report["targets"]}
    assert set(targets) == set(gpu_check.TARGETS)
    # measured from the step outputs (tiny sizes: the values mean nothing, the plumbing is what is tested)
    blocks = json.loads((out / gpu_check.FILES["bench_blocks"]).read_text())["rows"]
    row = next(r for r in blocks if r["name"] == "DSConv 3D" and r["precision"] == "bf16")
    assert targets["dsconv3d_time"]["measured"] == row["time_ratio"]
    assert targets["dsconv3d_saved"]["measured"] == row["saved_over_input"]
    train = json.loads((out / gpu_check.FILES["bench_train"]).read_text())["results"]
    assert targets["snake_iteration"]["measured"] == next(r["time_ratio"] for r in train if r["variant"] == "dsconv")
    modes = json.loads((out / gpu_check.FILES["bench_train"]).read_text())["modes"]
    assert modes["fp32"]["precision"] == "fp32" and modes["compile"]["compile"] == "aot_eager"  # CPU: no inductor
    assert "| fp32 + torch.compile aot_eager |" in md and set(modes["compile"]["rows"]) == {"vanilla", "dsconv"}
    assert targets["planner_memory"]["status"] == "not measured"
    assert all(t["status"] in ("met", "not met", "not measured") and not t["counts"] for t in targets.values())


def test_kernel_check_fails_on_a_wrong_kernel(monkeypatch):
    case = {"spatial": (5, 6), "axis": 1, "swing": (0,), "k": 3, "batch": 2, "c_in": 3, "c_out": 2}
    monkeypatch.setattr(gpu_check, "_kernel_cases", lambda quick: [case])
    assert gpu_check.kernel_check(torch.device("cpu"), True, log=lambda s: None)["pass"]
    real = triton_backend.forward
    monkeypatch.setattr(triton_backend, "forward", lambda *a: real(*a) * 1.01)
    result = gpu_check.kernel_check(torch.device("cpu"), True, log=lambda s: None)
    assert not result["pass"] and all(r["max_relative_error"]["y"] > 5e-3 for r in result["rows"])


def steps_with(time_ratio, saved_over_input, snake_ratio, plans):
    blocks = [{"name": "DSConv 3D", "precision": "fp32", "time_ratio": 99.0, "saved_over_input": 99.0},
              {"name": "DSConv 3D", "precision": "bf16", "time_ratio": time_ratio,
               "saved_over_input": saved_over_input},
              {"name": "DSConv 2D", "precision": "bf16", "time_ratio": 99.0, "saved_over_input": 99.0}]
    train = [{"variant": "vanilla", "time_ratio": 1.0}, {"variant": "dsconv", "time_ratio": snake_ratio}]
    return {"bench_blocks": {"result": {"rows": blocks}}, "bench_train": {"result": {"results": train}},
            "calibration": {"result": {"plans": plans}}}


def test_target_verdicts_on_known_numbers():
    plans = [{"planner_predicted_peak_gib": 10.5, "measured_gpu_peak_gib": 10.0},
             {"planner_predicted_peak_gib": 7.6, "measured_gpu_peak_gib": 8.0},  # the worst: 5% under
             {"naive": {}}]  # a plan without a GPU measurement does not count
    targets = {t["key"]: t for t in gpu_check.evaluate_targets(steps_with(2.9, 2.1, 1.31, plans), counts=True)}
    assert targets["dsconv3d_time"]["measured"] == 2.9 and targets["dsconv3d_time"]["status"] == "met"
    assert targets["dsconv3d_saved"]["status"] == "not met"  # 2.1 > 2
    assert targets["snake_iteration"]["status"] == "not met"  # 1.31 > 1.3
    assert targets["planner_memory"]["measured"] == pytest.approx(0.05) and targets["planner_memory"]["status"] == "met"
    assert all(t["counts"] for t in targets.values())

    plans = [{"planner_predicted_peak_gib": 12.0, "measured_gpu_peak_gib": 10.0}]
    targets = {t["key"]: t for t in gpu_check.evaluate_targets(steps_with(3.0, 2.0, 1.3, plans), counts=True)}
    assert [targets[k]["status"] for k in ("dsconv3d_time", "dsconv3d_saved", "snake_iteration")] == ["met"] * 3
    assert targets["planner_memory"]["measured"] == pytest.approx(0.2)
    assert targets["planner_memory"]["status"] == "not met"

    targets = gpu_check.evaluate_targets({"bench_blocks": {"ok": False, "error": "x"}}, counts=True)
    assert all(t["status"] == "not measured" and not t["counts"] for t in targets)

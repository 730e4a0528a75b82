"""`nnunet-tubeconv bench-train --quick`: the harness runs nnU-Net's real training step and reports honest numbers."""

import json

import pytest

from nnunet_tubeconv.benchmarks.perf import bench_train
from nnunet_tubeconv.cli import main

# bench-train sets torch's thread count for its runs (conftest.py puts it back)
pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def _json_run(capsys, *extra: str) -> dict:
    assert main(["bench-train", "--quick", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_quick_json_report(capsys):
    report = _json_run(capsys, "--variants", "scse,dlkdff")
    rows = {r["variant"]: r for r in report["results"]}
    assert list(rows) == ["vanilla", "scse", "dlkdff"]
    van = rows["vanilla"]
    assert van["time_ratio"] == 1.0 and van["memory_ratio"] == 1.0
    for r in rows.values():
        assert r["time_s"] > 0 and r["memory_bytes"] > 0
        assert r["memory_bytes"] == r["saved_bytes"] + r["state_bytes"]
        assert r["memory_ratio"] == pytest.approx(r["memory_bytes"] / van["memory_bytes"])
        assert r["time_ratio"] == pytest.approx(r["time_s"] / van["time_s"])
        # float32 parameters + gradients + SGD momentum; nnU-Net's loss weighs the lowest-resolution output 0, so its
        # head (16 -> 3 channels in the quick plan) gets no gradient and no momentum buffer
        assert r["state_bytes"] == 3 * 4 * r["params"] - 2 * 4 * (16 * 3 + 3)
    # scSE keeps its gates and adds parameters: it cannot be free
    assert rows["scse"]["saved_bytes"] > van["saved_bytes"]
    assert rows["scse"]["params"] > van["params"]
    assert rows["scse"]["target"] == 1.15 and isinstance(rows["scse"]["pass"], bool)
    assert rows["scse"]["pass"] == (rows["scse"]["time_ratio"] <= 1.15 and rows["scse"]["memory_ratio"] <= 1.15)
    assert rows["dlkdff"]["block_options"]["dff_skips"] == [0, 1, 2, 3]
    assert "saved_tensors_hooks" in report["memory_measure"]


def test_table_output(capsys):
    assert main(["bench-train", "--quick", "--variants", "scse"]) == 0
    out = capsys.readouterr().out
    rows = {cells[0]: cells for cells in _table_rows(out)}
    assert set(rows) == {"vanilla", "scse"} and "MiB" in rows["scse"][3]
    assert rows["vanilla"][-1] == "" and rows["vanilla"][2] == "1.00"  # vanilla has no target, so no verdict
    assert rows["scse"][6] == "<= 1.15x" and rows["scse"][-1] in ("PASS", "FAIL")


def _table_rows(out: str) -> list[list[str]]:
    """The body rows of rich's table (cells split on its vertical bars)."""
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 8 and cells[0] not in ("variant", ""):
            rows.append(cells)
    return rows


def _row(variant, time_ratio, memory_ratio, target, passed):
    from nnunet_tubeconv.architectures import DEFAULT_BLOCK_OPTIONS

    return {"variant": variant, "time_s": 0.1 * time_ratio, "time_ratio": time_ratio, "memory_bytes": 2**20,
            "memory_ratio": memory_ratio, "params": 10**6, "target": target, "pass": passed,
            "block_options": dict(DEFAULT_BLOCK_OPTIONS)}


def test_table_shows_each_rows_verdict(capsys):
    """Known answers: the verdict column is the row's own pass flag, and a row without a target has none."""
    report = {"plan": "p", "patch_size": [8, 8], "batch_size": 1, "device": "cpu", "threads": 1, "repeats": 1,
              "warmup": 0, "memory_measure": "m",
              "results": [_row("vanilla", 1.0, 1.0, None, None), _row("scse", 1.1, 1.05, 1.15, True),
                          _row("dsconv", 2.5, 1.2, 2.0, False)]}
    bench_train._print_table(report)
    rows = {cells[0]: cells for cells in _table_rows(capsys.readouterr().out)}
    assert [rows[v][-1] for v in ("vanilla", "scse", "dsconv")] == ["", "PASS", "FAIL"]
    assert rows["dsconv"][2] == "2.50" and rows["dsconv"][6] == "<= 2x"


def test_plans_file_configuration(tmp_path, capsys):
    entry, _ = bench_train.small_plan(3, quick=True)
    plans = {"configurations": {
        "3d_fullres": {"architecture": entry, "patch_size": [8, 32, 32], "batch_size": 1, "batch_dice": True},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres"},
    }}
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans))
    report = _json_run(capsys, "--variants", "scse", "--plans", str(path), "--configuration",
                       "3d_cascade_fullres", "--input-channels", "4")
    assert report["plan"].endswith(":3d_cascade_fullres")
    assert report["input_channels"] == 4 and report["patch_size"] == [8, 32, 32]


@pytest.mark.parametrize("argv, message", [
    (["--variants", "snake"], "unknown variant"),
    (["--options", '{"nope": {}}'], "--options"),
    (["--options", "not json"], "could not parse"),
    (["--patch-size", "8", "30", "32"], "divisible"),
    (["--patch-size", "32", "32"], "does not match"),
    (["--plans", "/nonexistent/plans.json"], "plans.json"),
    (["--precision", "amp", "--device", "cpu"], "on CPU nnU-Net trains in fp32"),
    (["--compile", "nope"], "not a torch.compile backend here; allowed: ["),
])
def test_bad_arguments(argv, message, capsys):
    assert main(["bench-train", "--quick", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-tubeconv bench-train: error: ") and message in err


def test_compile_times_the_compiled_networks_and_keeps_eager_memory(capsys):
    """--compile BACKEND: every network is timed through torch.compile (a backend registered here counts the graphs
    it receives), the warm-up includes the compilation, and the CPU memory column is the eager network's."""
    from torch._dynamo import register_backend

    graphs = []

    @register_backend(name="bench_train_test_counter")
    def counter(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager = _json_run(capsys, "--variants", "dsconv")
    compiled = _json_run(capsys, "--variants", "dsconv", "--compile", "bench_train_test_counter")
    assert len(graphs) >= 2  # vanilla's and dsconv's forward, at least
    assert compiled["compile"] == "bench_train_test_counter" and eager["compile"] is None
    assert compiled["warmup"] == 2 and compiled["precision"] == eager["precision"] == "fp32"
    for a, b in zip(eager["results"], compiled["results"]):
        assert a["variant"] == b["variant"] and a["memory_bytes"] == b["memory_bytes"] and b["time_s"] > 0


def test_loss_and_wide_arms(capsys):
    from nnunet_tubeconv.architectures.wide import parameter_count

    report = _json_run(capsys, "--variants", "skeleton_recall,cldice,wide,dsconv")
    rows = {r["variant"]: r for r in report["results"]}
    van, sr, cl, wide = rows["vanilla"], rows["skeleton_recall"], rows["cldice"], rows["wide"]
    # the loss arms train vanilla's network
    assert sr["params"] == cl["params"] == van["params"]
    # the skeleton channel is part of the targets, the recall term adds little to what autograd keeps
    assert sr["skeleton_s_per_batch"] > 0
    assert sr["serial_time_ratio"] == pytest.approx((sr["time_s"] + sr["skeleton_s_per_batch"]) / van["time_s"])
    assert sr["target"] == 1.15 and sr["pass"] == (sr["time_ratio"] <= 1.15 and sr["memory_ratio"] <= 1.15)
    # clDice keeps its soft skeletons for backward
    assert cl["saved_bytes"] > sr["saved_bytes"] >= van["saved_bytes"]
    # Wide: a PlainConvUNet with dsconv's parameters (within the rounding of one width step)
    assert "block_options" not in wide and wide["params"] == wide["wide"]["achieved"]
    assert wide["wide"]["target"] == rows["dsconv"]["params"]
    assert abs(wide["params"] - rows["dsconv"]["params"]) / rows["dsconv"]["params"] < 0.05
    entry, _ = bench_train.small_plan(3, quick=True)
    assert van["params"] == parameter_count(entry, 1, 3)

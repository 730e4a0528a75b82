"""``nnunet-tubeconv bench-blocks --quick``: every block in the table and the JSON, numbers sane, ratios consistent.

Timing targets are not tested (the CI machine is noisy); only that the numbers exist and add up.
"""

import contextlib
import io
import json
import math

import pytest

from nnunet_tubeconv.cli import main

BLOCK_ROWS = ["DSConv", "DSCBlock", "DeformConv", "DLK[paper]", "DLK[authors2025]", "DLKBlock[paper]", "DFF",
              "SCSE[add]", "SCSE[max]", "CNR+SCSE[add]"]
EXPECTED = [f"{b} {d}D" for d in (3, 2) for b in BLOCK_ROWS]
TIME_COLS = (3, 4, 5)  # t block, t base, t ratio
SAVED_COLS = (6, 7, 8)  # saved block, saved base, saved ratio


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "rows.json"
    out = io.StringIO()  # capsys is function-scoped: one run serves every test of this module
    with contextlib.redirect_stdout(out):
        code = main(["bench-blocks", "--quick", "--threads", "1", "--repeats", "2", "--warmup", "1",
                     "--json", str(path)])
    return code, out.getvalue(), json.loads(path.read_text())


def _table_cells(text: str, name: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.startswith("│") and ln.split("│")[1].strip() == name]
    assert len(lines) == 1, f"row {name!r} found {len(lines)} times in the table"
    return [c.strip() for c in lines[0].strip().strip("│").split("│")]


def test_every_block_has_a_row(quick_run):
    code, text, data = quick_run
    assert code == 0
    names = [r["name"] for r in data["rows"]]
    assert names == EXPECTED
    assert data["meta"]["quick"] is True and data["meta"]["threads"] == 1
    for name in EXPECTED:
        _table_cells(text, name)
    assert "QUICK" in text


def test_numbers_are_positive_and_finite(quick_run):
    _, _, data = quick_run
    for r in data["rows"]:
        for key in ("time_block_ms", "time_baseline_ms", "time_ratio", "saved_block_bytes", "saved_baseline_bytes",
                    "saved_ratio", "input_bytes", "saved_over_input"):
            v = r[key]
            assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (r["name"], key, v)
        assert r["peak_block_bytes"] is None and r["compile"] is None  # CPU run: no GPU peak, no compile check


def test_json_ratios_are_block_over_baseline(quick_run):
    _, _, data = quick_run
    for r in data["rows"]:
        assert r["time_ratio"] == pytest.approx(r["time_block_ms"] / r["time_baseline_ms"], abs=1e-4), r["name"]
        assert r["saved_ratio"] == pytest.approx(r["saved_block_bytes"] / r["saved_baseline_bytes"], abs=1e-4)
        assert r["saved_over_input"] == pytest.approx(r["saved_block_bytes"] / r["input_bytes"], abs=1e-4)
        shapes = r["input_shapes"]
        assert r["input_bytes"] == 4 * sum(math.prod(s) for s in shapes)  # float32 inputs


def test_printed_ratios_are_printed_block_over_printed_baseline(quick_run):
    _, text, data = quick_run
    for r in data["rows"]:
        cells = _table_cells(text, r["name"])
        for block_col, base_col, ratio_col in (TIME_COLS, SAVED_COLS):
            block, base, ratio = float(cells[block_col]), float(cells[base_col]), float(cells[ratio_col])
            assert ratio == pytest.approx(block / base, rel=6e-3), (r["name"], cells)  # 4 and 3 digits printed
        assert float(cells[3]) == pytest.approx(r["time_block_ms"], rel=1e-3)
        assert float(cells[6]) == pytest.approx(r["saved_block_bytes"] / 2**20, rel=1e-3)


def test_targets_and_verdicts(quick_run):
    _, text, data = quick_run
    rows = {r["name"]: r for r in data["rows"]}
    for d in (3, 2):
        dsconv = rows[f"DSConv {d}D"]
        assert dsconv["targets"] == {"time_ratio": 6.0, "saved_over_input": 4.0}
        assert dsconv["baseline"] == "conv3"
        assert rows[f"CNR+SCSE[add] {d}D"]["targets"] == {"time_ratio": 1.3}
        assert rows[f"DFF {d}D"]["baseline"] == "cat+CNR"
    for r in data["rows"]:
        verdict = _table_cells(text, r["name"])[-1]
        if not r["targets"]:
            assert r["pass"] is None and verdict == "-"
            continue
        expected = all(r[k] <= v for k, v in r["targets"].items())
        assert r["pass"] is expected
        assert verdict == ("PASS" if expected else "FAIL")


@pytest.mark.parametrize("argv, message", [
    (["--dims", "4"], "--dims"),
    (["--only", "no-such-block"], "matches no row"),
    (["--precision", "fp16"], "--precision"),
    (["--device", "cuda:0"], "cuda"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    import torch

    if argv[0] == "--device" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench-blocks", "--quick", *argv]) == 2
    assert message in capsys.readouterr().err


def test_dlk_mode_recorded_from_the_module(quick_run):
    _, _, data = quick_run
    modes = {r["name"]: r["dlk_mode"] for r in data["rows"]}
    for d in (3, 2):
        assert modes[f"DLK[paper] {d}D"] == "paper"
        assert modes[f"DLK[authors2025] {d}D"] == "authors2025"
        assert modes[f"DLKBlock[paper] {d}D"] == "paper"
        assert modes[f"DFF {d}D"] is None


def test_cpu_timer_is_recorded(tmp_path, capsys):
    path = tmp_path / "cpu.json"
    assert main(["bench-blocks", "--quick", "--threads", "1", "--repeats", "1", "--warmup", "1", "--dims", "2",
                 "--only", "SCSE[add]", "--timer", "cpu", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert [r["name"] for r in data["rows"]] == ["SCSE[add] 2D", "CNR+SCSE[add] 2D"]
    assert "process CPU" in data["meta"]["time"]
    assert all(r["time_block_ms"] > 0 and r["time_baseline_ms"] > 0 for r in data["rows"])
    assert "cpu time" in capsys.readouterr().out

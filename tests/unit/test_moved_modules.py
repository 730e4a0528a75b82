"""Modules that moved when the harness, its tools and its studies got their own places: the old names fail with a
message naming the new module (``nnunet_tubeconv.benchmarks.MOVED``), and every new name imports."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from nnunet_tubeconv.benchmarks import MOVED

OLD_NAMES = ("bench_blocks", "bench_train", "realistic_plans", "calibrate_memory", "gpu_check", "variant_nets",
             "snakes_ablation", "snakes_drive", "profile_snake", "compile_check")


def test_the_table_lists_every_module_that_moved():
    assert sorted(MOVED) == sorted(f"nnunet_tubeconv.benchmarks.{old}" for old in OLD_NAMES)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_importing_an_old_name_names_the_new_module(old):
    with pytest.raises(ModuleNotFoundError, match=MOVED[old].replace(".", r"\.")) as err:
        importlib.import_module(old)
    assert err.value.name == old
    package, _, name = old.rpartition(".")
    with pytest.raises(ModuleNotFoundError, match=MOVED[old].replace(".", r"\.")):
        __import__(package, fromlist=[name])  # what `from package import name` runs


def test_other_missing_names_stay_ordinary_errors():
    import nnunet_tubeconv.benchmarks as harness

    with pytest.raises(ModuleNotFoundError, match="No module named 'nnunet_tubeconv.benchmarks.no_such_tool'$"):
        importlib.import_module("nnunet_tubeconv.benchmarks.no_such_tool")
    assert not hasattr(harness, "no_such_tool")


def test_python_m_of_an_old_name_exits_non_zero_naming_the_new_module():
    r = subprocess.run([sys.executable, "-m", "nnunet_tubeconv.benchmarks.snakes_ablation", "--help"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0
    assert "nnunet_tubeconv.benchmarks.studies.snakes.ablation" in r.stderr


@pytest.mark.parametrize("new", sorted(MOVED.values()))
def test_every_new_module_imports(new):
    assert importlib.import_module(new).__name__ == new

"""The README's set-up command (`make test` / `make demo`) refuses a disk too full for the install, up front."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from support import REPO_ROOT

ROOT = REPO_ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_install_refuses_a_full_disk_before_creating_the_venv(tmp_path):
    venv = tmp_path / "venv"
    out = subprocess.run(["make", "-C", str(ROOT), f"VENV={venv}", "MIN_FREE_GB=1000000", "install"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "installing needs about 1000000 GB free" in out.stderr
    assert f"on {tmp_path}" in out.stderr  # names the venv's disk, and what to do about it
    assert "point VENV / TMPDIR at a larger disk" in out.stderr
    assert not venv.exists()  # nothing was half-installed


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_disk_check_passes_when_space_suffices(tmp_path):
    out = subprocess.run(["make", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", "MIN_FREE_GB=0", "diskcheck"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""

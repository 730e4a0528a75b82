"""Plain helpers of the tests (no fixtures: those live in the conftest.py of the folder that uses them).

``tests/`` is on ``sys.path`` under pytest (``pythonpath`` in pyproject.toml), so test modules import
``from support.plans import tiny_plans``. By purpose:

* :mod:`support.plans`: nnU-Net plans dicts, architecture entries and dataset.json made in the test;
* :mod:`support.networks`: networks built from entries and plans as nnU-Net builds them;
* :mod:`support.nnunet`: nnU-Net's folder variables, its console scripts, a trainer on stub preprocessed data;
* :mod:`support.e2e`: the end-to-end workflow of the integration tests (planned data set, short user trainers,
  narrower plans, a training killed and resumed, predictions);
* :mod:`support.blocks`: what the blocks' tests share (2D/3D parametrisation, random weights, references, refusals,
  saved-tensor counts);
* :mod:`support.onnx`: the ONNX-against-PyTorch check of every variant's network;
* :mod:`support.results`: a fabricated RESULTS_DIR as the harness writes it, and segmentation folders;
* ``support/ddp_worker.py``: the script the DDP test launches in two processes.
"""

from __future__ import annotations

from pathlib import Path

#: the repository's root folder (where pyproject.toml is)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: data sets shared by the checkouts of a machine, next to the repository (tests on real data skip without them)
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

"""``nnunet-tubeconv demo`` (``make demo``): the whole job on an embedded default, on CPU, in minutes.

1. writes a synthetic 2D vessel-tree data set (:func:`nnunet_tubeconv.data.synthetic.write_synthetic_dataset`) into
   the demo folder (default ``./demo_output``; ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` are put
   inside it unless they are set in the environment);
2. runs the benchmark harness for vanilla nnU-Net (``nnUNetTrainer``) and the snake variant
   (``nnUNetTrainerDSConv``) at the ``smoke`` budget on CPU: nnU-Net plans and preprocesses, both arms train on the
   same split, nnU-Net predicts the held-out fold, the evaluation scores it;
3. prints the comparison table and the path of ``report.html``, and writes ``demo_case.png`` (image, reference and
   both predictions of one validation case) into the results folder.

A second run finds every record and finishes at once with the same table.

The smoke budget is a smoke test, not a verdict: one fold, a handful of validation cases and a few minutes of
CPU training per arm. The report's paired statistics say how little such a sample can show.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

DEMO_DATASET_ID = 991
DEMO_DATASET_NAME = "TubeconvDemo2D"
DEMO_NUM_CASES = 24
DEMO_SHAPE = (96, 96)
DEMO_SEED = 0

#: The embedded suite (also a valid suite file: see ``benchmarks/suites/demo.toml``).
DEMO_SUITE: dict[str, Any] = {
    "name": "demo",
    "configurations": ["2d"],
    "arms": {
        "vanilla": {"trainer": "nnUNetTrainer"},
        "snake": {"trainer": "nnUNetTrainerDSConv"},
    },
    "baseline": "vanilla",
    "folds": [0],
    "seeds": [0],
    # 3 folds of 24 cases: 16 train, 8 validate (the report's paired test needs at least 6 pairs)
    "num_splits": 3,
    "budget": "smoke",
    "device": "cpu",
    "planning": {"num_processes": 2},
    # nnU-Net on 2 cores: augmentation in the training process (no worker processes to compete for the cores) and
    # one export/evaluation worker
    "env": {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "0"},
}


def demo_paths(work_dir: Path) -> dict[str, str]:
    """nnU-Net's folders: the environment's where set, else inside ``work_dir``."""
    out = {}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        out[var] = os.environ.get(var) or str((work_dir / var).resolve())
        Path(out[var]).mkdir(parents=True, exist_ok=True)
    return out


def _demo_dataset_matches(raw_root: Path, dataset_id: int, num_cases: int, shape: tuple[int, ...], seed: int) -> bool:
    """Whether ``raw_root`` already holds the demo data set made with exactly these generator settings."""
    from nnunet_tubeconv.data.common import dataset_folder_name

    name = dataset_folder_name(dataset_id, DEMO_DATASET_NAME)
    try:
        have = json.loads((raw_root / name / "dataset.json").read_text()).get("synthetic")
    except (OSError, ValueError):
        return False
    want = {"seed": seed, "dim": 2, "shape": list(shape), "num_cases": num_cases}
    return have == want and len(list((raw_root / name / "labelsTr").glob("*.nii.gz"))) == num_cases


def ensure_demo_dataset(raw_root: Path, dataset_id: int, num_cases: int, shape: tuple[int, ...], seed: int) -> str:
    """Write the synthetic data set unless the same one (same generator settings) is already there."""
    from nnunet_tubeconv.data.common import dataset_folder_name
    from nnunet_tubeconv.data.synthetic import write_synthetic_dataset

    name = dataset_folder_name(dataset_id, DEMO_DATASET_NAME)
    if _demo_dataset_matches(raw_root, dataset_id, num_cases, shape, seed):
        print(f"[demo] data set {name} already written", flush=True)
        return name
    t0 = time.perf_counter()
    write_synthetic_dataset(raw_root, dataset_id, 2, num_cases, shape=shape, seed=seed, name=DEMO_DATASET_NAME)
    print(f"[demo] wrote {num_cases} synthetic 2D vessel cases {shape} to {raw_root / name} "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return name


def _read(path: Path):
    import numpy as np
    import SimpleITK as sitk

    return np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def write_case_figure(results_dir: Path, raw_dataset: Path, out: Path) -> Path | None:
    """image | reference | one panel per arm, for the validation case with the median baseline Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite = json.loads((results_dir / "suite.json").read_text())
    ds, cfg, baseline = suite["datasets"][0], suite["configurations"][0], suite["baseline"]
    arms = [baseline, *[a for a in suite["arms"] if a != baseline]]
    fold, seed = suite["folds"][0], suite["seeds"][0]
    recs = {}
    for a in arms:
        p = results_dir / "runs" / ds / cfg / a / f"fold_{fold}_seed_{seed}" / "record.json"
        if p.is_file():
            r = json.loads(p.read_text())
            if r.get("status") == "done":
                recs[a] = r
    if baseline not in recs:
        return None
    rows = sorted(recs[baseline]["metrics"]["per_case"], key=lambda r: (r.get("dice") or 0.0, r["case"]))
    case = rows[len(rows) // 2]["case"]
    scores = {a: {r["case"]: r for r in rec["metrics"]["per_case"]}.get(case, {}) for a, rec in recs.items()}
    image = _read(raw_dataset / "imagesTr" / f"{case}_0000.nii.gz")
    ref = _read(raw_dataset / "labelsTr" / f"{case}.nii.gz")
    panels = [("image", image, "gray"), ("reference", ref, "magma")]
    for a, rec in recs.items():
        pred = Path(rec["nnunet_output_folder"]) / "validation" / f"{case}.nii.gz"
        if pred.is_file():
            s = scores[a]
            title = (f"{a} ({rec['trainer']})\nDice {s.get('dice', float('nan')):.3f}  "
                     f"clDice {s.get('cldice', float('nan')):.3f}")
            panels.append((title, _read(pred), "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.9))
    for ax, (title, arr, cmap) in zip(axes, panels):
        ax.imshow(arr, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{ds}, validation case {case} (fold {fold}, budget {suite['budget']})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # leave the top strip to the suptitle
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default="demo_output",
                        help="demo folder (default ./demo_output); nnU-Net folders go inside unless set in the "
                             "environment")
    parser.add_argument("--dataset-id", type=int, default=DEMO_DATASET_ID,
                        help=f"id of the synthetic data set (default {DEMO_DATASET_ID})")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"), help="default cpu")
    parser.add_argument("--budget", default="smoke", help="harness budget (default smoke)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")


def run(args: argparse.Namespace) -> int:
    from nnunet_tubeconv.benchmarks.runner import run_benchmark
    from nnunet_tubeconv.benchmarks.suite import parse_suite

    t0 = time.perf_counter()
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    paths = demo_paths(work)
    # bad input (SuiteError, ValueError: exit 2) and a failed step (RuntimeError: exit 1) are reported by the CLI
    results = work / "benchmark"
    raw = Path(paths["nnUNet_raw"])
    had = _demo_dataset_matches(raw, args.dataset_id, DEMO_NUM_CASES, DEMO_SHAPE, DEMO_SEED)
    name = ensure_demo_dataset(raw, args.dataset_id, DEMO_NUM_CASES, DEMO_SHAPE, DEMO_SEED)
    if not had:
        # everything derived from an older demo data set (plans, splits, trainings, records) is stale
        for stale in (Path(paths["nnUNet_preprocessed"]) / name, Path(paths["nnUNet_results"]) / name, results):
            if stale.exists():
                print(f"[demo] removing {stale} (made from an earlier version of the demo data set)", flush=True)
                shutil.rmtree(stale)
    data = {**DEMO_SUITE, "datasets": [name], "device": args.device, "budget": args.budget, "paths": paths}
    suite = parse_suite(data, source=None, default_name="demo")
    out = run_benchmark(suite, results, stream=not args.quiet)
    fig = None
    try:
        fig = write_case_figure(results, Path(paths["nnUNet_raw"]) / name, results / "demo_case.png")
    except Exception as e:  # noqa: BLE001 - a figure must not fail the demo
        print(f"[demo] figure not written: {type(e).__name__}: {e}", flush=True)
    print(f"\n[demo] {out.done}/{len(out.units)} units done, {out.failed} failed, "
          f"{time.perf_counter() - t0:.0f} s in this run")
    if fig:
        print(f"[demo] figure: {fig}")
    if out.report_html:
        print(f"[demo] report: {out.report_html}")
    print("[demo] smoke budget: a smoke test of the pipeline, not a verdict on the blocks (see the report's "
          "statistics)")
    return 0 if out.failed == 0 and out.done == len(out.units) else 1

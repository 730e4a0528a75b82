"""Held-out test sets: when a data set has ``imagesTs`` and ``labelsTs``, each arm (per seed) predicts them with
nnU-Net's own predictor, the arm's trained folds as an ensemble (``nnUNetv2_predict -f <folds>``), and the
predictions are scored like the validation cases (labels from dataset.json, ``masksTs`` as field of view when
present). One record per (data set, configuration, arm, seed) at ``runs/.../<arm>/test_seed_<s>/record.json``
(:func:`nnunet_tubeconv.evaluation.layout.test_rel_dir`), written atomically once; a finished record is never redone.
The report shows these in their own, clearly labelled tables; nothing is chosen on them.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

from nnunet_tubeconv.benchmarks.records import read_record, utc_now
from nnunet_tubeconv.evaluation.layout import RECORD_FILE, RECORD_SCHEMA, TEST_SPLIT, test_rel_dir
from nnunet_tubeconv.evaluation.serialise import write_json_atomic


def has_test_set(raw_dataset: Path) -> bool:
    return all((raw_dataset / d).is_dir() and any((raw_dataset / d).iterdir()) for d in ("imagesTs", "labelsTs"))


def ready_groups(suite, datasets: list[str], records: dict) -> list[tuple[str, str, str, int]]:
    """``(dataset, configuration, arm, seed)`` whose every fold of the suite finished."""
    out = []
    for ds in datasets:
        for cfg in suite.configurations:
            for arm in suite.arms:
                for seed in suite.arm_seeds(arm):
                    recs = [r for u, r in records.items() if (u.dataset, u.configuration, u.arm, u.seed)
                            == (ds, cfg, arm, seed)]
                    if len(recs) == len(suite.folds) and all(r and r["status"] == "done" for r in recs):
                        out.append((ds, cfg, arm, seed))
    return out


def predict_and_score(suite, ds: str, cfg: str, arm: str, seed: int, results_dir: Path, env: dict[str, str],
                      generated_trainer: str, device: str, stream: bool = True) -> dict[str, Any]:
    """Predict ``imagesTs`` with the arm's folds as an ensemble and score against ``labelsTs``; returns the record
    (status "failed" with the error when anything goes wrong)."""
    import os

    from nnunet_tubeconv.benchmarks.executors import EpochPrinter, nnunet_command, resolve_device, run_streaming
    from nnunet_tubeconv.evaluation import evaluate_folders
    from nnunet_tubeconv.evaluation.folders import labels_from_dataset_json

    out_dir = results_dir / test_rel_dir(ds, cfg, arm, seed)
    raw = Path(env["nnUNet_raw"]) / ds
    a = suite.arms[arm]
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA, "status": "failed", "split": TEST_SPLIT, "dataset": ds, "configuration": cfg,
        "arm": arm, "trainer": a.trainer, "plans": a.plans, "fold": None, "folds": list(suite.folds), "seed": seed,
        "budget": suite.budget.name, "generated_trainer": generated_trainer, "metrics": None, "error": None,
        "started": utc_now(), "finished": None, "wall_time_s": None, "images": str(raw / "imagesTs"),
        "labels": str(raw / "labelsTs"),
    }
    t0 = time.perf_counter()
    try:
        pred = out_dir / "predictions"
        pred.mkdir(parents=True, exist_ok=True)
        dev = resolve_device(device)
        cmd = nnunet_command("nnUNetv2_predict") + [
            "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", ds, "-c", cfg, "-tr", generated_trainer,
            "-p", a.plans, "-f", *[str(f) for f in suite.folds], "-device", dev, "-npp", "1", "-nps", "1",
            "--disable_progress_bar"]
        if stream:
            print(f"[test {arm} s{seed}] predict imagesTs of {ds} with folds {list(suite.folds)}", flush=True)
        code, _, _ = run_streaming(cmd, {**os.environ, **env}, out_dir / "predict.stdout.log",
                                   out_dir / "predict.stderr.log", EpochPrinter(f"[test {arm} s{seed}]", 1, False))
        if code != 0:
            tail = (out_dir / "predict.stderr.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"nnUNetv2_predict failed (exit {code}); tail of its stderr:\n{tail}")
        dataset_json = json.loads((raw / "dataset.json").read_text())
        labels, names = labels_from_dataset_json(dataset_json)
        masks = raw / "masksTs"
        results = evaluate_folders(pred, raw / "labelsTs", labels=labels, num_processes=1, progress=False,
                                   file_ending=dataset_json.get("file_ending", ".nii.gz"),
                                   mask_dir=masks if masks.is_dir() else None, label_names=names, **suite.evaluation)
        record.update(status="done", metrics=results)
    except Exception:  # noqa: BLE001 - recorded, the other arms go on
        record["error"] = traceback.format_exc()
    record.update(finished=utc_now(), wall_time_s=time.perf_counter() - t0)
    write_json_atomic(out_dir / RECORD_FILE, record)
    return record


def run_heldout(suite, datasets: list[str], results_dir: Path, env: dict[str, str], records: dict,
                generated_name, stream: bool = True) -> int:
    """Score the held-out test set of every finished (data set, configuration, arm, seed) that has none yet;
    returns how many records were written."""
    written = 0
    for ds, cfg, arm, seed in ready_groups(suite, datasets, records):
        if not has_test_set(Path(env["nnUNet_raw"]) / ds):
            continue
        if (read_record(results_dir / test_rel_dir(ds, cfg, arm, seed)) or {}).get("status") == "done":
            continue
        rec = predict_and_score(suite, ds, cfg, arm, seed, results_dir, env,
                                generated_name(suite.arms[arm].trainer, seed), suite.device, stream)
        written += 1
        if rec["status"] != "done":
            print(f"[test {arm} s{seed}] FAILED: {(rec['error'] or '').strip().splitlines()[-1]}", flush=True)
    return written

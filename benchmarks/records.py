"""Per-unit records (``record.json``, schema ``nnunet-tubeconv/record/1``): reading them back and what goes in them.

A record is written once, when its unit ends (done or failed), with
:func:`nnunet_tubeconv.evaluation.serialise.write_json_atomic` (strict JSON, crash-safe: a reader or a restarted
runner sees either no record or a complete one, never a torn file, whatever moment the process is killed at).

Layout and schema: :mod:`nnunet_tubeconv.evaluation.layout` (the one definition, read by the report too); extra keys
added here are listed in :data:`EXTRA_KEYS`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nnunet_tubeconv.evaluation.layout import RECORD_FILE, RECORD_SCHEMA, RECORD_STATUSES
from nnunet_tubeconv.evaluation.serialise import json_safe

__all__ = ["RECORD_FILE", "RECORD_SCHEMA"]

#: Keys this harness adds to the agreed schema (the report ignores what it does not know).
EXTRA_KEYS = (
    "generated_trainer",  # the generated budget/seed subclass that ran
    "budget_settings",  # epochs x iterations of the budget
    "deterministic",  # always False: see SEED_NOTE
    "seed_note",
    "peak_memory_source",  # how peak_memory_bytes was measured
    "iteration_time_source",
    "timing",  # epoch times, train-step median, training time summed over epochs
    "resumed",  # the last attempt continued from an nnU-Net checkpoint (--c)
    "attempts",
    "nnunet_output_folder",
    "telemetry",
    "log_file",
    "validation_cases",
)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_record(unit_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The unit's record, or None when there is none (or it cannot be read: then the unit is redone)."""
    p = Path(unit_dir) / RECORD_FILE
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("schema") != RECORD_SCHEMA or rec.get("status") not in RECORD_STATUSES:
        return None
    return rec


def git_commit(start: Path | None = None) -> str | None:
    """Commit of the nnunet-tubeconv checkout (with ``+dirty`` when it has uncommitted changes), or None."""
    here = Path(start or Path(__file__).resolve().parent)
    try:
        top = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], check=False, capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0:
            return None
        commit = top.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            check=False, capture_output=True, text=True, timeout=20,
        )
        return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("nnunetv2", "torch", "nnunet-tubeconv", "dynamic-network-architectures"):
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("-", "_")] = None
    return out


def curves_from_logging(logging: dict[str, Any] | None) -> dict[str, list] | None:
    """Training curves from a checkpoint's ``logging`` entry (nnU-Net's LocalLogger: ``train_losses``,
    ``val_losses``, ``mean_fg_dice``, ``ema_fg_dice``, ``lrs``, ``epoch_start_timestamps``,
    ``epoch_end_timestamps``; one value per epoch)."""
    if not isinstance(logging, dict):
        return None

    def col(key: str) -> list:
        return [json_safe(v) for v in logging.get(key, [])]

    starts, ends = logging.get("epoch_start_timestamps", []), logging.get("epoch_end_timestamps", [])
    n = min(len(starts), len(ends), len(logging.get("train_losses", [])))
    epoch_time = [float(e) - float(s) for s, e in zip(starts[:n], ends[:n])]
    return {
        "epoch": list(range(n)),
        "train_loss": col("train_losses")[:n],
        "val_loss": col("val_losses")[:n],
        "pseudo_dice": col("mean_fg_dice")[:n],
        "ema_pseudo_dice": col("ema_fg_dice")[:n],
        "lr": col("lrs")[:n],
        "epoch_time_s": epoch_time,
    }


def median(values: list[float]) -> float | None:
    v = sorted(x for x in values if x is not None and math.isfinite(x))
    if not v:
        return None
    m = len(v) // 2
    return v[m] if len(v) % 2 else 0.5 * (v[m - 1] + v[m])

"""Strict JSON and crash-safe writing: the one owner of how records and reports are serialised.

The benchmark harness writes its records (``record.json``) with these, the report its ``report.json``; both sit
below the harness here so that the core package never imports the harness.

A file is written by writing a temporary file in the same folder, ``fsync``-ing it, ``os.replace``-ing it over the
target and ``fsync``-ing the folder: a reader (or a restarted runner) sees either the old content or the complete
new one, never a torn file, whatever moment the process is killed at.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "dumps", "json_safe", "write_json_atomic"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that ``path`` is always either the old or the complete new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def json_safe(obj: Any) -> Any:
    """numpy scalars -> Python, NaN/inf -> None, tuples -> lists (records are strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def dumps(obj: Any) -> str:
    """``obj`` as strict JSON text (:func:`json_safe`, indent 1, a final newline)."""
    return json.dumps(json_safe(obj), indent=1, allow_nan=False) + "\n"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """:func:`dumps` of ``obj`` written with :func:`atomic_write_text`."""
    atomic_write_text(path, dumps(obj))

"""Environment variables set for a ``with`` block and restored after it, whatever happens inside.

nnU-Net reads its folders (``nnUNet_raw``, ``nnUNet_results`` ...) and its trainer search path from the environment
at call time, so the commands that call into it for a user set them only around that call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["set_environ"]


def _set(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def set_environ(**values: str | None) -> Iterator[None]:
    """Set each variable to its value (None: unset it) for the ``with`` block; afterwards each has its old value
    again, or is unset if it had none."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            _set(name, value)
        yield
    finally:
        for name, value in saved.items():
            _set(name, value)

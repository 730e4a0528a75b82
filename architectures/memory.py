"""Measure what autograd keeps for backward: the ground truth for every ``compute_conv_feature_map_size``.

``compute_conv_feature_map_size`` (ours and the blocks') counts tensor *elements* that a training-mode forward
saves for backward, per batch element, de-duplicated by storage, parameters excluded. :class:`SavedTensors`
records exactly that with :func:`torch.autograd.graph.saved_tensors_hooks`, in elements and in bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from typing_extensions import Self


class SavedTensors:
    """Context manager recording the distinct storages autograd saves inside the ``with`` block.

    >>> with SavedTensors(exclude=model.parameters()) as rec:
    ...     out = model(x)
    >>> rec.elements, rec.nbytes

    ``exclude``: tensors whose storages are not counted (the parameters: they exist anyway).
    Call :meth:`add` to count further tensors (e.g. the network's outputs, which the loss keeps) with the same
    de-duplication.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {self._key(t) for t in exclude}
        self._storages: dict[int, tuple[int, int]] = {}  # data_ptr -> (nbytes, element size)
        self._hooks = None

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    def add(self, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            return
        key = self._key(t)
        if key in self._excluded or key == 0:
            return
        self._storages.setdefault(key, (t.untyped_storage().nbytes(), t.element_size()))

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t

    def __enter__(self) -> Self:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct storages recorded."""
        return sum(n for n, _ in self._storages.values())

    @property
    def elements(self) -> int:
        """Elements of the distinct storages recorded (bytes / element size, per storage)."""
        return sum(n // max(e, 1) for n, e in self._storages.values())

"""architectures/memory.py: the package's one saved-tensor recorder, on known answers."""

from __future__ import annotations

import torch
from support import REPO_ROOT

from nnunet_tubeconv.architectures.memory import SavedTensors, measure_saved_tensors

ROOT = REPO_ROOT


def test_a_product_saves_both_factors():
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    assert measure_saved_tensors(lambda: a * b) == (24, 96)  # two float32 3x4 tensors
    assert measure_saved_tensors(lambda: a * b, exclude=[a]) == (12, 48)  # a "parameter" is not counted


def test_views_of_one_storage_count_once_at_full_size():
    a = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    x = a * 1.0  # a fresh storage of 20 elements; its two halves are saved by the product
    assert measure_saved_tensors(lambda: x[:2] * x[2:]) == (20, 160)


def test_add_counts_outputs_with_the_same_deduplication():
    a = torch.randn(10, requires_grad=True)
    with SavedTensors(exclude=[a]) as rec:
        y = torch.sin(a)  # saves a (excluded)
        rec.add(y)
        rec.add(y[:3])  # same storage: not counted again
    assert (rec.elements, rec.nbytes) == (10, 40)


def test_nothing_saved_without_grad():
    x = torch.randn(8)
    assert measure_saved_tensors(lambda: x * x) == (0, 0)


def test_the_package_has_one_saved_tensor_hook():
    users = sorted(str(p.relative_to(ROOT)) for folder in ("nnunet_tubeconv", "architectures", "trainers", "benchmarks")
                   for p in (ROOT / folder).rglob("*.py") if "saved_tensors_hooks(" in p.read_text())
    assert users == ["architectures/memory.py"]

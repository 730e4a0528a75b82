"""Timing of the evaluation metrics on a synthetic 3D vessel tree (default 512 x 512 x 128 voxels).

Run ``python -m nnunet_tubeconv.evaluation.bench`` (``--help`` for the size, seed and spacing). It builds a branching
tree of round tubes as the reference and a damaged copy as the prediction (one vessel cut, one branch dropped, a
false-positive blob, a thickened segment), then prints the seconds each metric took and the values. Set
``OMP_NUM_THREADS=1`` for a one-core figure (the metrics themselves are single-threaded).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def _paint_capsule(vol: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, spacing: np.ndarray,
                   value: bool = True) -> None:
    """Set every voxel within ``radius`` (physical units) of segment ``a``-``b`` (voxel coordinates) to ``value``."""
    pad = radius / spacing + 1
    lo = np.maximum(np.floor(np.minimum(a, b) - pad).astype(int), 0)
    hi = np.minimum(np.ceil(np.maximum(a, b) + pad).astype(int) + 1, vol.shape)
    if np.any(hi <= lo):
        return
    grid = np.stack(np.meshgrid(*[np.arange(lo[i], hi[i]) for i in range(3)], indexing="ij"), axis=-1)
    ab = (b - a) * spacing
    ap = (grid - a) * spacing
    t = np.clip((ap @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    dist = np.linalg.norm(ap - t[..., None] * ab, axis=-1)
    region = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    region[dist <= radius] = value


def vessel_tree(shape=(512, 512, 128), spacing=(0.7, 0.7, 1.0), seed: int = 0, depth: int = 9,
                root_radius: float = 8.0) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, float]]]:
    """A random binary vessel tree of shape ``shape`` and its list of segments ``(start, end, radius)``.

    The tree starts at the centre of the first face and bifurcates ``depth`` times; radii shrink by 0.75 per level
    (Murray-like), never below one voxel.
    """
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, float)
    shp = np.asarray(shape, float)
    vol = np.zeros(shape, dtype=bool)
    segments: list[tuple[np.ndarray, np.ndarray, float]] = []
    stack = [(np.array([2.0, shp[1] / 2, shp[2] / 2]), np.array([1.0, 0.0, 0.0]), root_radius, 0)]
    while stack:
        start, direction, radius, level = stack.pop()
        length_mm = 0.3 * float(np.max(shp * sp)) * (0.8 ** level) * rng.uniform(0.8, 1.2)
        end = np.clip(start + direction * length_mm / sp, 1, shp - 2)
        _paint_capsule(vol, start, end, radius, sp)
        segments.append((start, end, radius))
        if level + 1 >= depth:
            continue
        for sign in (-1, 1):
            new_dir = direction + sign * rng.uniform(0.5, 1.0) * _random_orthogonal(direction, rng)
            new_dir += rng.normal(0, 0.15, 3)
            new_dir /= np.linalg.norm(new_dir)
            stack.append((end, new_dir, max(radius * 0.75, float(sp.max())), level + 1))
    return vol, segments


def _random_orthogonal(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = rng.normal(size=3)
    w -= (w @ v) * v
    return w / np.linalg.norm(w)


def damaged_copy(ref: np.ndarray, segments, spacing, seed: int = 1) -> np.ndarray:
    """A plausible prediction: one vessel cut, the last branch dropped, a false-positive blob, one thickened tube."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing, float)
    pred = ref.copy()
    a, b, r = segments[len(segments) // 3]
    mid = (a + b) / 2
    step = (b - a) / max(np.linalg.norm((b - a) * sp), 1e-9)
    _paint_capsule(pred, mid - 1.5 * step, mid + 1.5 * step, r + 1.0, sp, value=False)
    a, b, r = segments[-1]
    _paint_capsule(pred, a + 0.2 * (b - a), b, r + 1.0, sp, value=False)
    centre = np.array([rng.uniform(0.2, 0.8) * s for s in ref.shape])
    _paint_capsule(pred, centre, centre, 3.0, sp)
    a, b, r = segments[1]
    _paint_capsule(pred, a, b, r + 1.0, sp)
    return pred


def main(argv: list[str] | None = None) -> int:
    from nnunet_tubeconv.evaluation.metrics import MetricSettings, evaluate_masks

    p = argparse.ArgumentParser(prog="python -m nnunet_tubeconv.evaluation.bench", description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=(512, 512, 128))
    p.add_argument("--spacing", type=float, nargs=3, default=(0.7, 0.7, 1.0))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--depth", type=int, default=9, help="bifurcation levels of the tree (default: %(default)s)")
    p.add_argument("--root-radius", type=float, default=8.0, help="trunk radius in mm (default: %(default)s)")
    p.add_argument("--distance-method", choices=("kdtree", "edt"), default="kdtree",
                   help="surface distances by KD-tree (default) or by scipy's EDT with sampling=spacing")
    args = p.parse_args(argv)

    t = time.perf_counter()
    ref, segments = vessel_tree(tuple(args.shape), tuple(args.spacing), seed=args.seed, depth=args.depth,
                                root_radius=args.root_radius)
    pred = damaged_copy(ref, segments, args.spacing, seed=args.seed + 1)
    build = time.perf_counter() - t
    print(f"case: shape {tuple(args.shape)}, spacing {tuple(args.spacing)}, {len(segments)} segments, "
          f"{int(ref.sum())} reference / {int(pred.sum())} predicted voxels (built in {build:.1f} s)")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    values = evaluate_masks(ref, pred, args.spacing, MetricSettings(distance_method=args.distance_method),
                            timings=timings)
    total = time.perf_counter() - t
    print(f"{'step':<20}{'seconds':>10}")
    for name, sec in timings.items():
        print(f"{name:<20}{sec:>10.2f}")
    print(f"{'total':<20}{total:>10.2f}")
    print("values: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) and not math.isnan(v) else f"{k}={v}"
                                 for k, v in values.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

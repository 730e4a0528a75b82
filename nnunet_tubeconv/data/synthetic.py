"""Synthetic tubular data: seeded, branching, curved vessel trees in 2D or 3D, written as an nnU-Net v2 raw data set.

Why synthetic tubes: a cheap, fully reproducible stand-in for vessel data (retina in 2D, hepatic/coronary trees in
3D) whose difficulty sits where tubular blocks claim to help: thin, curved, low-contrast structures whose topology
matters.

Generator (per case, all randomness from ``numpy.random.default_rng([seed, dim, case_index])``):

1. Trees. Each tree starts on a random face of the volume and grows inwards as a chain of short straight segments.
   Curvature: the heading turns at a rate that follows an Ornstein-Uhlenbeck process (2D: scalar turn rate; 3D: a
   curvature vector projected perpendicular to the heading), so directions vary smoothly. The radius tapers
   exponentially with path length; at random bifurcations (Poisson in path length) the radius splits by Murray's
   law ``r^3 = r1^3 + r2^3`` (Murray, PNAS 1926) with a random asymmetry, and the daughters leave at Murray's
   minimum-work angles (J. Gen. Physiol. 1926) plus jitter, so thin side branches leave at wide angles.
   Branches stop below a minimum radius of ~0.3 voxel, so every tree ends in sub-voxel vessels; a branch also stops
   where it leaves the image, and where it would come within ``CLEARANCE`` voxels (plus its radius) of an earlier
   tree, so trees never touch and each stays its own component.
2. Rasterisation. Each segment is a capsule with linearly varying radius; distances to it are computed only inside
   a bounded box around it. The *image* gets the partial-volume fraction of each voxel covered by the tube
   (analytic 1D box overlap across the tube, times the cross-section factor in 3D), so a radius-0.3 vessel appears
   as a faint line. The *label* (rule ``"connected"``, the default) is the set of voxels whose centre lies within
   the radius plus the centreline drawn at least one voxel wide (points every <= 1/4 voxel along each segment,
   rounded to voxels, so consecutive ones are 8-/26-neighbours): every tree is exactly one 8-/26-connected
   component of the label, and holes appear only where branches of one tree cross. Rule ``"centre-in-tube"``
   (``--label-noise``) keeps only the voxels whose centre lies within the radius: sub-voxel twigs then break into
   many small fragments (default seed and cases: up to 110 components for 2-4 trees in 2D, 82-261 for 3-5 trees
   in 3D), a model of label noise, not of the trees.
3. Imaging model: ``image = bias * (background + contrast * blur(coverage)) + noise`` with a smooth random texture
   plus blob distractors as background, Gaussian blur as point-spread function, a smooth multiplicative bias field
   (exp of a random quadratic), and Gaussian noise.

Shapes are numpy order (y, x) in 2D and (z, y, x) in 3D; spacing is written into the NIfTI header.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_tubeconv.data.common import (
    FORCE_HELP,
    OUTPUT_HELP,
    dataset_folder_name,
    prepare_dataset_folder,
    resolve_raw_root,
    write_dataset_json,
    write_nifti,
)

DEFAULT_DATASET_ID = {2: 900, 3: 901}
DEFAULT_NAME = {2: "SynthTubes2D", 3: "SynthTubes3D"}
DEFAULT_SHAPE = {2: (160, 160), 3: (96, 96, 96)}
DEFAULT_NUM_CASES = {2: 24, 3: 12}
CASE_PREFIX = "tubes"
#: bumped whenever the same seed gives different arrays (written into dataset.json "synthetic")
GENERATOR_VERSION = 2
LABEL_RULES = ("connected", "centre-in-tube")
#: voxels kept between a branch's surface and any earlier tree's label: well above the 8-/26-neighbour distance
CLEARANCE = 3.5
_CENTRELINE_STEP = 0.25


@dataclass(frozen=True)
class TreeParams:
    """Growth parameters in voxel units; ``size`` scales lengths to the image (``min(shape)``)."""

    root_radius: tuple[float, float] = (2.0, 3.5)
    min_radius: tuple[float, float] = (0.25, 0.35)
    step: float = 1.5
    turn_std: float = 0.035  # stationary std of the turn rate, rad per voxel
    turn_corr: float = 15.0  # correlation length of the turn rate, voxels
    taper_length: float = 0.9  # e-folding length of the radius, in units of `size`
    branch_every: float = 28.0  # mean path length between bifurcations, voxels
    angle_jitter_deg: float = 8.0  # std of the deviation from Murray's optimal branching angles
    asymmetry: tuple[float, float] = (0.45, 1.0)  # r_child / r_parent_continuation
    max_segments: int = 4000


# 3D: thinner roots and more, denser-branching trees, so a 96^3 volume holds a few % vessel as a liver does
TREE_PARAMS = {
    2: TreeParams(),
    3: TreeParams(root_radius=(1.5, 3.0), turn_std=0.03, branch_every=16.0, taper_length=1.2),
}
NUM_TREES = {2: (2, 4), 3: (3, 5)}  # inclusive range per case


@dataclass(frozen=True)
class ImageParams:
    """Intensity model (background around 0.3, vessels brighter by ``contrast``)."""

    contrast: tuple[float, float] = (0.55, 0.9)
    noise_std: tuple[float, float] = (0.06, 0.12)
    blur_sigma: tuple[float, float] = (0.5, 0.9)
    texture_amplitude: tuple[float, float] = (0.05, 0.12)
    bias_strength: tuple[float, float] = (0.15, 0.4)  # max |log bias| over the image
    num_blobs: tuple[int, int] = (2, 6)
    blob_amplitude: tuple[float, float] = (-0.25, 0.35)


@dataclass
class SyntheticCase:
    """One generated case.

    image: float32 (*shape); label: uint8 (*shape) in {0, 1}; segments: float64 (M, 2*dim + 3) rows
    ``[p0 (dim), p1 (dim), r0, r1, tree_index]`` in voxel coordinates (numpy axis order).
    """

    image: np.ndarray
    label: np.ndarray
    segments: np.ndarray
    spacing: tuple[float, ...]

    @property
    def radii(self) -> np.ndarray:
        d = (self.segments.shape[1] - 3) // 2
        return self.segments[:, 2 * d : 2 * d + 2].ravel()


def _check_shape(dim: int, shape: Sequence[int] | None) -> tuple[int, ...]:
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if shape is None:
        return DEFAULT_SHAPE[dim]
    shape = tuple(int(s) for s in shape)
    if len(shape) != dim or min(shape) < 16:
        raise ValueError(f"shape must have {dim} entries, each >= 16, got {shape}")
    return shape


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _random_perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    if d.size == 2:
        return np.array([-d[1], d[0]]) * (1.0 if rng.random() < 0.5 else -1.0)
    v = rng.normal(size=3)
    v -= v.dot(d) * d
    return _unit(v)


def murray_angles(r0: float, r1: float, r2: float) -> tuple[float, float]:
    """Optimal deflections (radians) of the two daughters of a bifurcation r0 -> (r1, r2), from minimum work
    (Murray, "The physiological principle of minimum work applied to the angle of branching of arteries",
    J. Gen. Physiol. 1926): ``cos t1 = (r0^4 + r1^4 - r2^4) / (2 r0^2 r1^2)`` and symmetrically for ``t2``.
    Symmetric split: 37.5 degrees each; a thin side branch leaves at up to 90 degrees while the trunk barely bends.
    """
    c1 = (r0**4 + r1**4 - r2**4) / (2.0 * r0**2 * r1**2)
    c2 = (r0**4 + r2**4 - r1**4) / (2.0 * r0**2 * r2**2)
    return math.acos(min(1.0, max(-1.0, c1))), math.acos(min(1.0, max(-1.0, c2)))


def _clear(clearance: np.ndarray | None, points: np.ndarray, r: float) -> bool:
    """Whether every point (k, dim) lies more than ``max(r, sqrt(dim)/2) + CLEARANCE`` voxels from earlier trees.

    ``clearance`` is the Euclidean distance of each voxel to the nearest earlier-tree voxel (inf where none); points
    are clamped into the image first (projection onto the box only moves a point closer to anything inside it).
    """
    if clearance is None:
        return True
    hi = np.asarray(clearance.shape) - 1
    idx = np.rint(np.clip(points, 0, hi)).astype(int)
    dim = clearance.ndim
    # rounding a point moves it by <= sqrt(dim)/2, a label voxel lies <= max(r, sqrt(dim)/2) from its centreline
    need = max(r, 0.5 * math.sqrt(dim)) + CLEARANCE + 0.5 * math.sqrt(dim)
    return bool(np.all(clearance[tuple(idx.T)] > need))


def grow_tree(rng: np.random.Generator, shape: Sequence[int], params: TreeParams = TreeParams(),
              clearance: np.ndarray | None = None) -> np.ndarray:
    """Grow one vessel tree; return its segments, float64 (M, 2*dim + 2): ``[p0, p1, r0, r1]`` in voxels.

    A branch ends where it leaves the image (its last segment may reach up to one step outside) and before a
    segment that would come within ``CLEARANCE`` of an earlier tree (``clearance``: distance map of the earlier
    trees' label, see :func:`_clear`); an empty array when the root itself is not clear.
    """
    shape_arr = np.asarray(shape, dtype=float)
    dim = shape_arr.size
    size = float(shape_arr.min())
    # root on a random face, heading for a random point of the central region
    axis, side = int(rng.integers(dim)), int(rng.integers(2))
    start = rng.uniform(0.2, 0.8, size=dim) * (shape_arr - 1)
    start[axis] = 0.0 if side == 0 else shape_arr[axis] - 1.0
    target = rng.uniform(0.3, 0.7, size=dim) * (shape_arr - 1)
    heading = _unit(target - start)
    # radii are tuned for the default shapes; scale them with the image so larger images hold the same trees
    r_root = rng.uniform(*params.root_radius) * size / min(DEFAULT_SHAPE[dim])
    r_root = float(np.clip(r_root, 1.0, 0.06 * size))
    r_min = rng.uniform(*params.min_radius)
    taper = math.exp(-params.step / (params.taper_length * size))
    rho = math.exp(-params.step / params.turn_corr)
    kick = math.sqrt(1.0 - rho * rho) * params.turn_std
    p_branch = params.step / params.branch_every
    lo, hi = -0.5, shape_arr - 0.5

    segments: list[np.ndarray] = []
    # FIFO so the cap on segments trims the finest generations, not whole sub-trees
    queue: list[tuple[np.ndarray, np.ndarray, float]] = [(start, heading, r_root)]
    qi = 0
    while qi < len(queue) and len(segments) < params.max_segments:
        pos, d, r = queue[qi]
        qi += 1
        turn = np.zeros(dim) if dim == 3 else 0.0
        while len(segments) < params.max_segments:
            if dim == 2:
                turn = rho * turn + kick * rng.normal()
                ang = turn * params.step
                c, s = math.cos(ang), math.sin(ang)
                d = np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])
            else:
                turn = rho * turn + kick * rng.normal(size=3)
                k_perp = turn - turn.dot(d) * d
                d = _unit(d + params.step * k_perp)
            r_next = r * taper
            nxt = pos + params.step * d
            if not _clear(clearance, np.stack([pos, 0.5 * (pos + nxt), nxt]), r):
                break
            segments.append(np.concatenate([pos, nxt, [r, r_next]]))
            pos, r = nxt, r_next
            if np.any(pos < lo) or np.any(pos > hi) or r < r_min:
                break
            if rng.random() < p_branch:
                alpha = rng.uniform(*params.asymmetry)
                r1 = r / (1.0 + alpha**3) ** (1.0 / 3.0)
                r2 = alpha * r1
                theta1, theta2 = murray_angles(r, r1, r2)
                jitter = math.radians(params.angle_jitter_deg)
                theta1 = abs(theta1 + jitter * rng.normal())
                theta2 = abs(theta2 + jitter * rng.normal())
                u = _random_perpendicular(rng, d)
                if r2 >= r_min:
                    queue.append((pos.copy(), _unit(math.cos(theta2) * d + math.sin(theta2) * u), r2))
                d = _unit(math.cos(theta1) * d - math.sin(theta1) * u)
                r = r1
    return np.asarray(segments, dtype=np.float64).reshape(-1, 2 * dim + 2)


def centreline_voxels(segments: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Voxel indices (k, dim) of the centreline of every segment: points at most 1/4 voxel apart along each segment,
    clamped into the image and rounded, so consecutive points of a chain are equal or 8-/26-neighbours."""
    dim = len(shape)
    p0, p1 = segments[:, :dim], segments[:, dim:2 * dim]
    if len(segments) == 0:
        return np.zeros((0, dim), dtype=int)
    # samples per segment from its own length only, so a segment draws the same voxels alone or in a batch
    counts = np.maximum(np.ceil(np.linalg.norm(p1 - p0, axis=1) / _CENTRELINE_STEP).astype(int) + 1, 2)
    out = []
    for n in np.unique(counts):
        sel = counts == n
        t = np.linspace(0.0, 1.0, int(n))[None, :, None]
        pts = p0[sel][:, None, :] + t * (p1[sel] - p0[sel])[:, None, :]
        out.append(np.rint(np.clip(pts.reshape(-1, dim), 0, np.asarray(shape) - 1)).astype(int))
    return np.unique(np.concatenate(out), axis=0)


def rasterise(segments: np.ndarray, shape: Sequence[int], label_rule: str = "connected"
              ) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume coverage (float32, [0, 1]) and label (bool) of capsule segments.

    label_rule ``"connected"``: centre-in-tube voxels plus :func:`centreline_voxels` (each connected chain of
    segments is one 8-/26-connected component); ``"centre-in-tube"``: only voxels whose centre lies within the
    radius (sub-voxel vessels break up).

    segments: (M, 2*dim + 2) rows ``[p0, p1, r0, r1]`` (extra trailing columns ignored); shape: (*spatial).
    Coverage per voxel at perpendicular distance ``d`` from a tube of local radius ``r``: the overlap of
    ``[-r, r]`` with the voxel's extent ``[d - 1/2, d + 1/2]`` (2D), times ``min(1, pi r / 2)`` in 3D so a thin tube
    covers about ``pi r^2`` of a voxel. Overlapping tubes combine by maximum.
    """
    shape = tuple(int(s) for s in shape)
    dim = len(shape)
    segments = np.asarray(segments, dtype=np.float64)
    if segments.ndim != 2 or segments.shape[1] < 2 * dim + 2:
        raise ValueError(f"segments must be (M, >= {2 * dim + 2}) rows [p0, p1, r0, r1] for {dim}D, "
                         f"got {segments.shape}")
    if label_rule not in LABEL_RULES:
        raise ValueError(f"label_rule must be one of {list(LABEL_RULES)}, got {label_rule!r}")
    cover = np.zeros(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=bool)
    for chunk in _chunks(segments[:, : 2 * dim + 2], dim):
        _rasterise_chunk(chunk, cover, label)
    if label_rule == "connected":
        label[tuple(centreline_voxels(segments, shape).T)] = True
    return cover, label


def _chunks(segments: np.ndarray, dim: int, max_len: int = 8) -> list[np.ndarray]:
    """Runs of <= ``max_len`` consecutive, connected segments: one bounded box and one set of numpy calls each."""
    m = len(segments)
    if m == 0:
        return []
    connected = np.all(segments[1:, :dim] == segments[:-1, dim : 2 * dim], axis=1)
    run_starts = [0, *(np.flatnonzero(~connected) + 1).tolist(), m]
    return [
        segments[s : min(s + max_len, b)]
        for a, b in itertools.pairwise(run_starts)
        for s in range(a, b, max_len)
    ]


def _rasterise_chunk(chunk: np.ndarray, cover: np.ndarray, label: np.ndarray) -> None:
    """Max-combine the coverage and OR the label of k segments (k, 2*dim + 2) into ``cover``/``label`` in place."""
    dim = cover.ndim
    p0, p1, r0, r1 = chunk[:, :dim], chunk[:, dim : 2 * dim], chunk[:, 2 * dim], chunk[:, 2 * dim + 1]
    reach = float(np.maximum(r0, r1).max()) + 0.5
    lo = np.maximum(np.floor(np.minimum(p0, p1).min(0) - reach).astype(int), 0)
    hi = np.minimum(np.ceil(np.maximum(p0, p1).max(0) + reach).astype(int) + 1, np.asarray(cover.shape))
    if np.any(hi <= lo):
        return
    k = len(chunk)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # (k, *box) arrays by broadcasting: segment axis first, then one open grid per spatial axis
    grids = [g[None] for g in np.ogrid[box]]
    seg = p1 - p0
    seg_len2 = np.einsum("kd,kd->k", seg, seg)
    inv_len2 = np.divide(1.0, seg_len2, out=np.zeros_like(seg_len2), where=seg_len2 > 0)
    col = (k,) + (1,) * dim
    rel = [grids[i] - p0[:, i].reshape(col) for i in range(dim)]
    t = sum(rel[i] * (seg[:, i] * inv_len2).reshape(col) for i in range(dim))
    np.clip(t, 0.0, 1.0, out=t)
    dist = np.sqrt(sum((rel[i] - t * seg[:, i].reshape(col)) ** 2 for i in range(dim)))
    r = r0.reshape(col) + t * (r1 - r0).reshape(col)
    cov = np.minimum(r, dist + 0.5) - np.maximum(-r, dist - 0.5)
    np.clip(cov, 0.0, 1.0, out=cov)
    if dim == 3:
        cov *= np.minimum(1.0, 0.5 * math.pi * r)
    np.maximum(cover[box], cov.max(0), out=cover[box], casting="unsafe")
    label[box] |= (dist <= r).any(0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return f / (f.std() + 1e-8)


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    coords = np.meshgrid(*[np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    log_b = np.zeros(shape, dtype=np.float32)
    for i, ci in enumerate(coords):
        log_b = log_b + rng.normal() * ci
        for j in range(i, len(coords)):
            log_b = log_b + 0.5 * rng.normal() * ci * coords[j]
    log_b *= strength / (np.abs(log_b).max() + 1e-8)
    return np.exp(log_b)


def render_image(
    rng: np.random.Generator, cover: np.ndarray, params: ImageParams = ImageParams()
) -> np.ndarray:
    """Imaging model applied to a coverage map (*shape) -> float32 image (*shape); see the module docstring."""
    shape = cover.shape
    size = min(shape)
    vessels = ndimage.gaussian_filter(cover, rng.uniform(*params.blur_sigma))
    amp = rng.uniform(*params.texture_amplitude)
    background = 0.3 + amp * (0.7 * _smooth_noise(rng, shape, size / 12.0) + 0.3 * _smooth_noise(rng, shape, 1.5))
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(int(rng.integers(params.num_blobs[0], params.num_blobs[1] + 1))):
        centre = rng.uniform(0, 1, size=len(shape)) * np.asarray(shape)
        sigma = rng.uniform(0.02, 0.08) * size
        d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        background = background + rng.uniform(*params.blob_amplitude) * np.exp(-d2 / (2 * sigma**2))
    image = (background + rng.uniform(*params.contrast) * vessels) * _bias_field(
        rng, shape, rng.uniform(*params.bias_strength)
    )
    image = image + rng.uniform(*params.noise_std) * rng.standard_normal(shape).astype(np.float32)
    return image.astype(np.float32)


def generate_case(
    seed: int,
    case_index: int,
    dim: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    tree_params: TreeParams | None = None,
    image_params: ImageParams = ImageParams(),
    label_rule: str = "connected",
) -> SyntheticCase:
    """Generate case ``case_index`` of the data set with ``seed`` (independent of how many cases are generated).

    The trees, the image and the tree index of every segment do not depend on ``label_rule`` (only the label does).
    """
    if label_rule not in LABEL_RULES:
        raise ValueError(f"label_rule must be one of {list(LABEL_RULES)}, got {label_rule!r}")
    shape = _check_shape(dim, shape)
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * dim))
    if len(spacing) != dim or min(spacing) <= 0:
        raise ValueError(f"spacing must have {dim} positive entries, got {spacing}")
    rng = np.random.default_rng([int(seed), int(dim), int(case_index)])
    tree_params = TREE_PARAMS[dim] if tree_params is None else tree_params
    num_trees = int(rng.integers(NUM_TREES[dim][0], NUM_TREES[dim][1] + 1))
    trees: list[np.ndarray] = []
    occupied = np.zeros(shape, dtype=bool)
    for _ in range(num_trees):
        clearance = ndimage.distance_transform_edt(~occupied) if occupied.any() else None
        for _attempt in range(20):  # a root that starts too close to an earlier tree grows nothing: try another
            seg = grow_tree(rng, shape, tree_params, clearance)
            if len(seg):
                break
        if not len(seg):
            continue
        trees.append(np.concatenate([seg, np.full((len(seg), 1), float(len(trees)))], axis=1))
        occupied |= rasterise(seg, shape, "connected")[1]
    segments = np.concatenate(trees, axis=0)
    cover, label = rasterise(segments, shape, label_rule)
    image = render_image(rng, cover, image_params)
    return SyntheticCase(image=image, label=label.astype(np.uint8), segments=segments, spacing=spacing)


def synthetic_stamp(seed: int, dim: int, shape: Sequence[int], num_cases: int, label_rule: str = "connected"
                    ) -> dict:
    """The generator settings written into dataset.json ``"synthetic"``: same stamp, same arrays."""
    return {"seed": int(seed), "dim": int(dim), "shape": [int(s) for s in shape], "num_cases": int(num_cases),
            "version": GENERATOR_VERSION, "label_rule": label_rule}


def write_synthetic_dataset(
    raw_root: str | os.PathLike,
    dataset_id: int,
    dim: int,
    num_cases: int,
    shape: Sequence[int] | None = None,
    seed: int = 0,
    name: str | None = None,
    spacing: Sequence[float] | None = None,
    force: bool = False,
    label_rule: str = "connected",
) -> Path:
    """Write ``raw_root/DatasetXXX_Name`` (nnU-Net v2 raw format) with ``num_cases`` synthetic vessel cases.

    Cases are ``tubes_000`` ... with ``imagesTr/tubes_000_0000.nii.gz`` (float32) and ``labelsTr/tubes_000.nii.gz``
    (uint8, {0: background, 1: vessel}). Re-writing the same data set replaces it; a different data set with the same
    id raises ``ValueError`` unless ``force``. Returns the data-set folder.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    shape = _check_shape(dim, shape)
    name = DEFAULT_NAME[dim] if name is None else name
    dataset_folder_name(dataset_id, name)  # validate before touching the disk
    out = prepare_dataset_folder(Path(raw_root), dataset_id, name, force=force)
    for i in range(int(num_cases)):
        case = generate_case(seed, i, dim, shape, spacing, label_rule=label_rule)
        cid = f"{CASE_PREFIX}_{i:03d}"
        write_nifti(out / "imagesTr" / f"{cid}_0000.nii.gz", case.image, case.spacing)
        write_nifti(out / "labelsTr" / f"{cid}.nii.gz", case.label, case.spacing)
    write_dataset_json(
        out,
        channel_names={0: "synthetic"},
        labels={"background": 0, "vessel": 1},
        num_training=int(num_cases),
        dataset_name=name,
        description=(
            f"Synthetic {dim}D branching vessel trees (nnunet-tubeconv synth), seed {seed}, shape {list(shape)}. "
            + ("Label: voxel centres inside the tube radius plus the centreline at least one voxel wide (each tree one "
               "connected component); " if label_rule == "connected" else
               "Label (label noise): only voxel centres inside the tube radius, so sub-voxel twigs are fragmented; ")
            + "image: partial-volume tubes, texture, blur, bias, noise."
        ),
        license="CC0 (synthetic)",
        converted_by="nnunet-tubeconv",
        synthetic=synthetic_stamp(seed, dim, shape, num_cases, label_rule),
    )
    return out


# ---------------------------------------------------------------------------------------------------------- CLI


def _shape_arg(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 160x160 or 96,96,96, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2, help="2D or 3D vessel trees (default 2)")
    parser.add_argument("-o", "--output", default=None, help=OUTPUT_HELP)
    parser.add_argument(
        "--dataset-id", type=int, default=None,
        help=f"default {DEFAULT_DATASET_ID[2]} (2D) / {DEFAULT_DATASET_ID[3]} (3D)",
    )
    parser.add_argument("--name", default=None, help=f"data-set name (default {DEFAULT_NAME[2]} / {DEFAULT_NAME[3]})")
    parser.add_argument(
        "--num-cases", type=int, default=None, help=f"default {DEFAULT_NUM_CASES[2]} (2D) / {DEFAULT_NUM_CASES[3]} (3D)"
    )
    parser.add_argument(
        "--shape", type=_shape_arg, default=None, help="e.g. 160x160 or 96x96x96 (default 160x160 / 96x96x96)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed gives identical arrays")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("--label-noise", action="store_true",
                        help="label only voxel centres inside the tube radius, so sub-voxel twigs break into fragments "
                             "(for studying label noise; default: every tree one connected component)")


def run(args: argparse.Namespace) -> int:

    dim = args.dim
    dataset_id = DEFAULT_DATASET_ID[dim] if args.dataset_id is None else args.dataset_id
    num_cases = DEFAULT_NUM_CASES[dim] if args.num_cases is None else args.num_cases
    t0 = time.perf_counter()
    raw_root = resolve_raw_root(args.output)
    out = write_synthetic_dataset(
        raw_root, dataset_id, dim, num_cases, shape=args.shape, seed=args.seed, name=args.name, force=args.force,
        label_rule="centre-in-tube" if args.label_noise else "connected",
    )
    print(f"wrote {num_cases} cases to {out} in {time.perf_counter() - t0:.1f} s")
    return 0

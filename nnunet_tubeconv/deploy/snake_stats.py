"""``nnunet-tubeconv snake-stats``: do a trained model's dynamic snake convolutions follow the vessels?

``show-snakes`` draws a few dozen snakes; this command measures all of them. For every
:class:`~nnunet_tubeconv.blocks.dsconv.DSConv` of a trained model, over whole images after nnU-Net's own
preprocessing (the configuration's preprocessor, as inference runs it), it reports::

    nnunet-tubeconv snake-stats MODEL_FOLDER -f 0 -i imagesTr -r labelsTr --cases DRIVE_24 DRIVE_29 -o stats.json

* ``saturated``: fraction of the swing values ``delta = tanh(...)`` with ``|delta| > 0.95`` (a swing stuck at the
  end of tanh's range learns no more); ``mean_step``: mean ``|delta| * extend_scope``, voxels per kernel step;
* ``tilt`` / ``constant_tilt``: fraction of positions whose snake is tilted, i.e. whose chord (last point minus
  first point) moves at least 0.5 voxel sideways per kernel step along a swing axis, and the fraction tilted to the
  single most common side (per swing axis, the larger one reported). A snake that degenerated into one fixed
  oblique line has ``constant_tilt`` near 1;
* with reference labels (``-r``), at the positions whose centre lies on the vessel (the label max-pooled by the
  layer's cumulative stride, i.e. "some voxel of this cell is vessel"):
  - ``adherence_snake``: mean label value (linear interpolation, border clamped as the kernel samples) at the
    ``K - 1`` outer sample points, beside ``adherence_straight``: the same for the straight kernel (points
    ``p + j e_axis``) at the same positions;
  - ``direction_snake``: mean ``|cos|`` of the angle between the snake's chord and the vessel's direction (the
    eigenvector of the smallest eigenvalue of the label's structure tensor, derivative sigma 1, integration sigma 2
    layer voxels), beside ``direction_straight`` (the straight kernel's, ``|v_axis|``);
  - ``near_vessel_snake`` / ``near_vessel_straight``: the adherence to the label dilated by one layer voxel (a
    full ``3^d`` neighbourhood): how often the outer points lie on or next to the vessel. A snake that samples the
    vessel's wall or the background just beside it (contrast) scores low adherence but high near-vessel;
  - over cases: the mean paired difference snake - straight and its 95% bootstrap CI (cases resampled, seeded).

Positions added by padding to the network's divisor are left out. The geometry is that of
:meth:`DSConv.snake_coordinates` (voxel units of the layer's input, before clamping).
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SATURATION = 0.95  #: |tanh| above this counts as saturated
TILT_SLOPE = 0.5  #: voxels sideways per kernel step from which a snake counts as tilted
DIRECTION_SIGMAS = (1.0, 2.0)  #: structure tensor: derivative and integration sigma, layer voxels

__all__ = ["SATURATION", "TILT_SLOPE", "ci_text", "layer_case_stats", "pct", "pool_label", "signed_pct",
           "snake_stats", "summarise", "vessel_directions"]


# ---------------------------------------------------------------------------------------------------------------
# pure geometry (numpy; tested on constructed cases)


def pool_label(label: np.ndarray, stride: Sequence[int]) -> np.ndarray:
    """Boolean max-pool of ``label`` ``(*S)`` by ``stride`` (ceil: a partial cell at the end counts)."""
    lab = np.asarray(label) > 0
    stride = [int(s) for s in stride]
    if len(stride) != lab.ndim:
        raise ValueError(f"stride {stride} has {len(stride)} axes, the label {lab.ndim}")
    pads = [(0, (-n) % s) for n, s in zip(lab.shape, stride)]
    lab = np.pad(lab, pads)
    shape = []
    for n, s in zip(lab.shape, stride):
        shape += [n // s, s]
    return lab.reshape(shape).any(axis=tuple(range(1, 2 * lab.ndim, 2)))


def vessel_directions(label: np.ndarray, positions: np.ndarray, sigmas: Sequence[float] = DIRECTION_SIGMAS
                      ) -> np.ndarray:
    """Unit vessel direction ``(P, d)`` at integer ``positions`` ``(P, d)``: the eigenvector of the smallest
    eigenvalue of the structure tensor of ``label`` (Gaussian derivatives, sigma ``sigmas[0]``, products smoothed
    with ``sigmas[1]``). Along a tube the label varies least along its axis."""
    from scipy.ndimage import gaussian_filter

    lab = np.asarray(label, dtype=np.float64)
    d = lab.ndim
    grads = []
    for ax in range(d):
        order = [0] * d
        order[ax] = 1
        grads.append(gaussian_filter(lab, sigmas[0], order=order, mode="nearest"))
    idx = tuple(np.asarray(positions, dtype=np.int64).T)
    tensor = np.empty((len(positions), d, d))
    for a in range(d):
        for b in range(a, d):
            v = gaussian_filter(grads[a] * grads[b], sigmas[1], mode="nearest")[idx]
            tensor[:, a, b] = v
            tensor[:, b, a] = v
    _, vecs = np.linalg.eigh(tensor)  # ascending eigenvalues
    return vecs[:, :, 0]


def _interp(label: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``label`` at ``points`` ``(d, M)``, coordinates clamped onto the volume."""
    from scipy.ndimage import map_coordinates

    hi = np.asarray(label.shape, dtype=np.float64).reshape(-1, 1) - 1
    pts = np.clip(points, 0, hi)
    return map_coordinates(label.astype(np.float64), pts, order=1, mode="nearest")


def layer_case_stats(
    coords: np.ndarray,
    delta: np.ndarray | None,
    axis: int,
    swing_axes: Sequence[int],
    extend_scope: float = 1.0,
    label: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> dict[str, Any]:
    """The statistics of one DSConv on one image (see the module docstring).

    ``coords``: ``(K, d, *S)`` sample points (``DSConv.snake_coordinates`` of one batch element); ``delta``:
    ``(n_swing * (K - 1), *S)`` raw swing or None (no swing); ``label``: ``(*S)`` vessel mask at the layer's
    resolution or None; ``valid``: ``(*S)`` bool, the positions to count (default all).
    """
    from scipy.ndimage import binary_dilation, generate_binary_structure

    coords = np.asarray(coords, dtype=np.float64)
    k, d, *spatial = coords.shape
    spatial = tuple(spatial)
    if len(spatial) != d:
        raise ValueError(f"coords must be (K, d, *S) with d spatial axes, got shape {coords.shape}")
    valid = np.ones(spatial, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != spatial:
        raise ValueError(f"valid has shape {valid.shape}, the layer's grid is {spatial}")
    out: dict[str, Any] = {"positions": int(valid.sum())}
    if delta is not None and np.asarray(delta).size:
        dv = np.abs(np.asarray(delta, dtype=np.float64)[:, valid])
        out["saturated"] = float((dv > SATURATION).mean())
        out["mean_step"] = float(dv.mean() * extend_scope)
    else:
        out["saturated"], out["mean_step"] = 0.0, 0.0
    chord = coords[-1] - coords[0]  # (d, *S): last point minus first point
    tilt, constant = 0.0, 0.0
    for s in swing_axes:
        slope = chord[s][valid] / max(k - 1, 1)
        pos, neg = float((slope >= TILT_SLOPE).mean()), float((slope <= -TILT_SLOPE).mean())
        tilt, constant = max(tilt, pos + neg), max(constant, pos, neg)
    out["tilt"], out["constant_tilt"] = tilt, constant
    if label is None:
        return out
    lab = np.asarray(label) > 0
    if lab.shape != spatial:
        raise ValueError(f"label has shape {lab.shape}, the layer's grid is {spatial}")
    on = lab & valid
    out["vessel_positions"] = int(on.sum())
    if not on.any():
        out.update(adherence_snake=None, adherence_straight=None, direction_snake=None, direction_straight=None,
                   near_vessel_snake=None, near_vessel_straight=None)
        return out
    where = np.argwhere(on)  # (P, d)
    c = k // 2
    outer = [i for i in range(k) if i != c]
    pts = coords[(slice(None), slice(None), *where.T)]  # (K, d, P)
    snake_pts = pts[outer].transpose(1, 0, 2).reshape(d, -1)
    straight = np.repeat(where.T[:, None, :].astype(np.float64), len(outer), axis=1)  # (d, K - 1, P)
    straight[axis] += (np.asarray(outer) - c)[:, None]
    out["adherence_snake"] = float(_interp(lab, snake_pts).mean())
    out["adherence_straight"] = float(_interp(lab, straight.reshape(d, -1)).mean())
    near = binary_dilation(lab, generate_binary_structure(d, d))
    out["near_vessel_snake"] = float(_interp(near, snake_pts).mean())
    out["near_vessel_straight"] = float(_interp(near, straight.reshape(d, -1)).mean())
    vdir = vessel_directions(lab, where)  # (P, d)
    u = chord[(slice(None), *where.T)].T  # (P, d)
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    u = u / np.where(norm > 0, norm, 1.0)
    out["direction_snake"] = float(np.abs((u * vdir).sum(1)).mean())
    out["direction_straight"] = float(np.abs(vdir[:, axis]).mean())
    return out


def summarise(per_case: Mapping[str, Mapping[str, Any]], seed: int = 0, n_resamples: int | None = None
              ) -> dict[str, Any]:
    """Means over cases of every statistic, and for adherence / direction / near-vessel the paired difference
    snake - straight with its 95% bootstrap CI over cases (None with fewer than 2 cases; ``n_resamples``: the
    bootstrap's, default ``stats.N_RESAMPLES``)."""
    from nnunet_tubeconv.evaluation.stats import N_RESAMPLES, bootstrap_ci

    keys = sorted({k for v in per_case.values() for k, x in v.items() if isinstance(x, (int, float))})
    out: dict[str, Any] = {"cases": len(per_case)}
    for key in keys:
        vals = [v[key] for v in per_case.values() if v.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    for what in ("adherence", "direction", "near_vessel"):
        diffs = [v[f"{what}_snake"] - v[f"{what}_straight"] for v in per_case.values()
                 if v.get(f"{what}_snake") is not None]
        if not diffs:
            continue
        out[f"{what}_diff"] = float(np.mean(diffs))
        out[f"{what}_diff_ci"] = (list(bootstrap_ci(np.asarray(diffs), n_resamples or N_RESAMPLES, seed=seed))
                                  if len(diffs) >= 2 else None)
    return out


# ---------------------------------------------------------------------------------------------------------------
# a trained model


def _case_files(images: Sequence[str], file_ending: str, n_channels: int, cases: Sequence[str] | None
                ) -> dict[str, list[str]]:
    """case id -> channel files, from folders of ``CASE_XXXX<ending>`` files and/or ``_0000`` files."""
    found: dict[str, list[str]] = {}
    suffix = "_0000" + file_ending
    for item in images:
        p = Path(item)
        if p.is_dir():
            files = sorted(p.glob("*" + suffix))
        elif p.is_file() and p.name.endswith(suffix):
            files = [p]
        else:
            raise ValueError(f"{item!r} is neither a folder nor an existing CASE{suffix} file")
        for f in files:
            case = f.name[: -len(suffix)]
            chans = [str(f.parent / f"{case}_{c:04d}{file_ending}") for c in range(n_channels)]
            missing = [c for c in chans if not Path(c).is_file()]
            if missing:
                raise ValueError(f"case {case}: the model takes {n_channels} channel(s); missing {missing}")
            found[case] = chans
    if cases is not None:
        unknown = sorted(set(cases) - set(found))
        if unknown:
            raise ValueError(f"case(s) {unknown} not found in {list(images)}; found {sorted(found)[:10]}...")
        found = {c: found[c] for c in cases}
    if not found:
        raise ValueError(f"no CASE{suffix} image found in {list(images)}")
    return found


def _label_file(labels: str, case: str, file_ending: str) -> str:
    p = Path(labels)
    f = p / f"{case}{file_ending}" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"reference label for case {case} not found: {f}")
    return str(f)


def snake_stats(model: Any, images: Sequence[str], labels: str | None = None, cases: Sequence[str] | None = None,
                seed: int = 0) -> dict[str, Any]:
    """Statistics of every DSConv of ``model`` (a loaded ``TrainedModel``) over the given cases; see module doc."""
    import torch

    from nnunet_tubeconv.deploy.snakes import (
        NoSnakesError,
        block_of,
        cumulative_strides,
        dsconv_layers,
        forward_capturing_inputs,
        pad_to,
        stage_of,
    )

    network = model.network
    layers = dsconv_layers(network)
    if not layers:
        raise NoSnakesError(
            f"the model ({model.trainer_name}) has no DSConv layer, so there are no snakes to measure; snake-stats "
            "needs a model trained with nnUNetTrainerDSConv, nnUNetTrainerTubeConv or a subclass"
        )
    pm, cm, dj = model.plans_manager, model.configuration_manager, model.dataset_json
    ending = dj.get("file_ending", "")
    n_channels = len(dj.get("channel_names", dj.get("modality", {"0": ""})))
    files = _case_files(images, ending, n_channels, cases)
    net_dim = model.dim
    cumulative = cumulative_strides(cm.network_arch_init_kwargs.get("strides", [[1] * net_dim]), net_dim)
    divisor = cumulative[-1]
    reader = pm.image_reader_writer_class()
    preprocessor = cm.preprocessor_class(verbose=False)
    per_layer: dict[str, dict[str, Any]] = {name: {} for name, _ in layers}
    meta: dict[str, dict[str, Any]] = {}
    for case, chans in files.items():
        data, props = reader.read_images(chans)
        seg = None
        if labels is not None:
            seg, _ = reader.read_seg(_label_file(labels, case, ending))
        pre, pre_seg, _ = preprocessor.run_case_npy(data.copy(), None if seg is None else seg.copy(),
                                                    copy.deepcopy(props), pm, cm, dj)
        if net_dim == 2:
            if pre.shape[1] != 1:
                raise ValueError(f"case {case}: a 2D configuration but the image has {pre.shape[1]} slices")
            x = torch.from_numpy(np.ascontiguousarray(pre[None, :, 0])).float()
            lab_full = None if pre_seg is None else pre_seg[0, 0] > 0
        else:
            x = torch.from_numpy(np.ascontiguousarray(pre[None])).float()
            lab_full = None if pre_seg is None else pre_seg[0] > 0
        valid_shape = list(x.shape[2:])
        x = pad_to(x, divisor)
        _, captured = forward_capturing_inputs(network, x, layers)
        for name, layer in layers:
            xin = captured[name]
            stage = stage_of(xin.shape[2:], x.shape[2:], cumulative)
            cum = cumulative[stage]
            with torch.no_grad():
                coords = layer.snake_coordinates(xin)[0].numpy()
                delta = layer.swing(xin)
                delta = None if delta is None else delta[0].numpy()
            grid = tuple(xin.shape[2:])
            valid = np.zeros(grid, dtype=bool)
            valid[tuple(slice(0, -(-n // c)) for n, c in zip(valid_shape, cum))] = True
            lab = None
            if lab_full is not None:
                lab = pool_label(lab_full, cum)
                lab = np.pad(lab, [(0, g - n) for g, n in zip(grid, lab.shape)])[tuple(slice(0, g) for g in grid)]
            per_layer[name][case] = layer_case_stats(coords, delta, layer.axis, layer.swing_axes, layer.extend_scope,
                                                     lab, valid)
            meta[name] = {"block": block_of(network, name), "stage": stage, "morph_axis": int(layer.axis),
                          "swing_axes": list(layer.swing_axes), "kernel_size": int(layer.kernel_size),
                          "extend_scope": layer.extend_scope,
                          "swing_norm": getattr(layer, "swing_norm_kind", "stage")}
    return {
        "model": str(model.folder.path),
        "trainer": model.trainer_name,
        "cases": list(files),
        "labels": labels is not None,
        "definitions": {"saturated": f"|tanh| > {SATURATION}", "tilt_slope": TILT_SLOPE,
                        "direction_sigmas": list(DIRECTION_SIGMAS)},
        "layers": [{"name": name, **meta[name], "per_case": per_layer[name],
                    "summary": summarise(per_layer[name], seed)} for name, _ in layers],
    }


# ---------------------------------------------------------------------------------------------------------------
# text


def pct(v: float | None) -> str:
    """``12.3%`` (``-`` for None)."""
    return "-" if v is None else f"{100 * v:.1f}%"


def signed_pct(v: float | None) -> str:
    """``+12.3%`` (``-`` for None)."""
    return "-" if v is None else f"{100 * v:+.1f}%"


def ci_text(v: Sequence[float] | None, percent: bool = True) -> str:
    """``[+1.0, +2.0]`` in percent points (or plain numbers), ``-`` for None."""
    if v is None:
        return "-"
    return f"[{100 * v[0]:+.1f}, {100 * v[1]:+.1f}]" if percent else f"[{v[0]:+.3f}, {v[1]:+.3f}]"


def format_stats(stats: Mapping[str, Any]) -> str:
    """A plain-text table, one row per DSConv layer (summary over cases)."""
    head = ["layer", "stage", "axis", "saturated", "mean step", "tilt", "same tilt"]
    if stats["labels"]:
        head += ["adh snake", "adh straight", "diff (95% CI)", "dir snake", "dir straight", "diff (95% CI)",
                 "near-vessel diff (95% CI)"]
    rows = [head]
    for layer in stats["layers"]:
        s = layer["summary"]
        row = [layer["name"], str(layer["stage"]), str(layer["morph_axis"]), pct(s.get("saturated")),
               "-" if s.get("mean_step") is None else f"{s['mean_step']:.3f}", pct(s.get("tilt")),
               pct(s.get("constant_tilt"))]
        if stats["labels"]:
            row += [pct(s.get("adherence_snake")), pct(s.get("adherence_straight")),
                    f"{signed_pct(s.get('adherence_diff'))} {ci_text(s.get('adherence_diff_ci'))}",
                    f"{s['direction_snake']:.3f}" if s.get("direction_snake") is not None else "-",
                    f"{s['direction_straight']:.3f}" if s.get("direction_straight") is not None else "-",
                    "-" if s.get("direction_diff") is None else
                    f"{s['direction_diff']:+.3f} {ci_text(s.get('direction_diff_ci'), percent=False)}",
                    f"{signed_pct(s.get('near_vessel_diff'))} {ci_text(s.get('near_vessel_diff_ci'))}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_tubeconv.deploy.model_folder import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("-i", "--images", nargs="+", required=True, metavar="IMAGES",
                        help="folder(s) of CASE_0000<ending> images (nnU-Net raw layout) and/or _0000 files")
    parser.add_argument("-r", "--labels", default=None,
                        help="folder of reference labels CASE<ending> (adherence and direction need them)")
    parser.add_argument("--cases", nargs="+", default=None, help="only these case ids (e.g. a fold's validation cases)")
    parser.add_argument("-o", "--output", default=None, help="JSON file to write (per case and summary)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap CI")


def run(args: argparse.Namespace) -> int:
    from nnunet_tubeconv.deploy.model_folder import load_trained_model, resolve_model_folder

    # a ModelFolderError, NoSnakesError or a bad image/label list (ValueErrors) is reported by the CLI, exit status 2
    folder = resolve_model_folder(args.model_folder, args.fold, args.trainer, args.plans, args.configuration,
                                  args.checkpoint)
    model = load_trained_model(folder, args.configuration)
    stats = snake_stats(model, args.images, args.labels, args.cases, args.seed)
    print(f"{stats['trainer']}: {len(stats['layers'])} DSConv layer(s) over {len(stats['cases'])} case(s)")
    print(format_stats(stats))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(stats, indent=2))
        print(f"wrote {out}")
    return 0

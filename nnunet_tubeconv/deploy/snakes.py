"""``nnunet-tubeconv show-snakes``: draw where a trained model's dynamic snake convolutions sample the image.

DSCNet (Qi et al., "Dynamic Snake Convolution based on Topological Geometric Constraints for Tubular Structure
Segmentation", ICCV 2023, arXiv 2307.08388) argues that its kernels bend along the vessels; its figures draw the
kernels' sample points over images. The authors were asked for that visualisation and never shipped it. This
command draws it for any trained model that contains :class:`~nnunet_tubeconv.blocks.dsconv.DSConv` layers::

    nnunet-tubeconv show-snakes $nnUNet_results/Dataset902_DRIVE/nnUNetTrainerDSConv__nnUNetPlans__2d \\
        imagesTr/DRIVE_21_0000.nii.gz -f 0 -o snakes.png

What it does, step by step:

1. loads the model as nnU-Net's inference does and preprocesses the image with the configuration's own
   preprocessor (``DefaultPreprocessor.run_case_npy``: transpose, crop to non-zero, normalisation, resampling);
2. runs the network on one 2D slice (2D configurations; padded to a multiple of the pooling strides) or on a
   patch-sized 3D window centred on the chosen slice, with forward pre-hooks on every DSConv that keep its input;
3. takes the network's own prediction of that input (argmax, or sigmoid > 0.5 for regions) and picks a few dozen
   foreground positions, spread evenly (one per tile of a grid), on the grid of the chosen resolution stage;
4. for every DSConv of that stage, evaluates ``snake_coordinates`` of the hooked input at those positions (the K
   sample points, stage voxel units), maps them to the displayed image (stage stride, window offset, undoing
   nnU-Net's resampling and cropping) and draws each snake as a polyline, one colour per morph axis; one panel per
   block (e.g. encoder and decoder DSCBlock of that stage).

The displayed image is the input file itself (first channel), transposed as nnU-Net transposes it, at its own
resolution; in 3D the in-plane projection of the points is drawn on the slice.
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: one colour per morph axis (0: first spatial axis ...), chosen to stand out on grey images
AXIS_COLOURS = ("#ff3b30", "#00c7ff", "#7cfc00")
DEFAULT_POINTS = 40

__all__ = [
    "SnakeLayer",
    "SnakePlot",
    "dsconv_layers",
    "forward_capturing_inputs",
    "preprocessed_to_original",
    "show_snakes",
    "spread_points",
]


class NoSnakesError(ValueError):
    """The model has no DSConv layer (or none at the requested stage)."""


@dataclass
class SnakeLayer:
    """The snakes of one DSConv at the chosen positions.

    ``positions``: ``(P, d)`` int, output positions on the layer's grid; ``coords``: ``(P, K, d)`` float32, the
    layer's ``snake_coordinates`` at those positions (layer voxel units, before clamping); ``display``:
    ``(P, K, 2)`` float, (row, column) in the displayed image's pixels; ``plotted``: the same read back from the
    figure's lines.
    """

    name: str
    block: str
    morph_axis: int
    positions: np.ndarray
    coords: np.ndarray
    display: np.ndarray
    plotted: np.ndarray | None = None


@dataclass
class SnakePlot:
    """What :func:`show_snakes` drew (also what tests check)."""

    path: Path
    stage: int
    slice_index: int
    image: np.ndarray = field(repr=False)  # (rows, cols) displayed image
    network_input: Any = field(repr=False)  # torch.Tensor (1, C, *S) fed to the network
    layers: list[SnakeLayer] = field(default_factory=list)
    stages_available: list[int] = field(default_factory=list)
    selection: str = "predicted foreground"  # how the positions were chosen


# ---------------------------------------------------------------------------------------------------------------
# geometry helpers (pure numpy, unit-tested)


def spread_points(candidates: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``n`` rows of ``candidates`` ``(M, d)`` (integer positions), spread evenly over them.

    Tiles the positions with the largest square tile size that still leaves at least ``n`` occupied tiles and takes
    one random position per tile (then ``n`` of those at random), so dense and sparse regions are both visited and,
    unlike farthest-point sampling, the outermost positions are not preferred.
    """
    m = len(candidates)
    if m == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pts = np.asarray(candidates, dtype=np.int64)
    order = rng.permutation(m)

    def one_per_tile(size: int) -> np.ndarray:
        _, first = np.unique(pts[order] // size, axis=0, return_index=True)
        return order[first]

    lo, hi = 1, int(np.ptp(pts, axis=0).max()) + 1
    while lo < hi:  # largest tile size with >= n occupied tiles (the count falls as tiles grow)
        mid = (lo + hi + 1) // 2
        if len(one_per_tile(mid)) >= n:
            lo = mid
        else:
            hi = mid - 1
    picked = one_per_tile(lo)
    if len(picked) > n:
        picked = rng.choice(picked, n, replace=False)
    return np.sort(picked)


def preprocessed_to_original(coords: np.ndarray, properties: dict, preprocessed_shape: Sequence[int]) -> np.ndarray:
    """Map voxel coordinates ``(..., d)`` of nnU-Net's preprocessed array to the (transposed) original array.

    Undoes the resampling (pixel centres aligned: ``o = (q + 0.5) * n_cropped / n_preprocessed - 0.5``, as
    skimage's ``resize`` maps them) and the crop to non-zero (``+ bbox start``). ``properties``: the dict
    nnU-Net's preprocessor returns; ``preprocessed_shape``: spatial shape of the preprocessed array.
    """
    cropped = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    pre = np.asarray(preprocessed_shape, dtype=np.float64)
    start = np.asarray([b[0] for b in properties["bbox_used_for_cropping"]], dtype=np.float64)
    if not (len(cropped) == len(pre) == len(start) == coords.shape[-1]):
        raise ValueError(f"coordinates have {coords.shape[-1]} axes but the image has {len(pre)}")
    return (coords + 0.5) * (cropped / pre) - 0.5 + start


def dsconv_layers(network) -> list[tuple[str, Any]]:
    """``(qualified name, module)`` of every DSConv in ``network``, in module order."""
    from nnunet_tubeconv.blocks.dsconv import DSConv

    return [(name, m) for name, m in network.named_modules() if isinstance(m, DSConv)]


def forward_capturing_inputs(network, x, layers: Sequence[tuple[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """``network(x)`` without gradients, and the input each of ``layers`` (``(name, module)`` pairs, e.g. from
    :func:`dsconv_layers`) received in it, detached, by name."""
    import torch

    captured: dict[str, Any] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: captured.__setitem__(name, args[0].detach()))
               for name, m in layers]
    try:
        with torch.no_grad():
            out = network(x)
    finally:
        for h in handles:
            h.remove()
    return out, captured


def block_of(network, name: str) -> str:
    """The nearest ancestor of ``name`` that is not a container: the block a DSConv belongs to."""
    from torch import nn

    modules = dict(network.named_modules())
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if not isinstance(modules.get(parent), (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
            return parent
    return name


def cumulative_strides(strides: Sequence, dim: int) -> list[list[int]]:
    out, cur = [], [1] * dim
    for s in strides:
        s = [int(s)] * dim if isinstance(s, (int, float)) else [int(v) for v in s]
        cur = [a * b for a, b in zip(cur, s)]
        out.append(list(cur))
    return out


def stage_of(shape: Sequence[int], input_shape: Sequence[int], cumulative: list[list[int]]) -> int:
    """The resolution stage whose grid ``shape`` is (conv arithmetic with stride: ceil(size / stride))."""
    for level, cum in enumerate(cumulative):
        if all(int(s) == -(-int(n) // c) for s, n, c in zip(shape, input_shape, cum)):
            return level
    raise ValueError(f"DSConv input of spatial shape {tuple(shape)} matches no stage of input {tuple(input_shape)}")


# ---------------------------------------------------------------------------------------------------------------
# the command


def _find_channel_files(images: Sequence[str], n_channels: int, file_ending: str) -> list[str]:
    files = [str(Path(p)) for p in images]
    for f in files:
        if not Path(f).is_file():
            raise ValueError(f"image {f!r} does not exist")
    if len(files) == n_channels:
        return files
    if len(files) == 1 and n_channels > 1:
        m = re.fullmatch(r"(.*)_0000" + re.escape(file_ending), files[0])
        if m:
            found = [f"{m.group(1)}_{c:04d}{file_ending}" for c in range(n_channels)]
            if all(Path(f).is_file() for f in found):
                return found
    raise ValueError(
        f"the model takes {n_channels} input channel(s) but {len(files)} image file(s) were given; give one file per "
        f"channel (CASE_0000{file_ending}, CASE_0001{file_ending}, ...) or the _0000 file with its siblings next to it"
    )


def _foreground(logits, label_manager) -> tuple[np.ndarray, np.ndarray]:
    """Predicted foreground mask and foreground probability, both ``(*S)``, from logits ``(1, heads, *S)``:
    argmax / softmax (1 - p(background)) for labels, sigmoid > 0.5 / max sigmoid for regions."""
    import torch

    if label_manager.has_regions:
        prob = torch.sigmoid(logits[0]).amax(0)
        return (prob > 0.5).numpy(), prob.numpy()
    return (logits[0].argmax(0) > 0).numpy(), (1 - torch.softmax(logits[0], 0)[0]).numpy()


def pad_to(x, divisor: Sequence[int]):
    """Zero-pad the spatial axes of ``x`` ``(1, C, *S)`` at their end to multiples of ``divisor``."""
    import torch.nn.functional as F

    pads = []
    for n, d in zip(reversed(x.shape[2:]), reversed(list(divisor))):
        pads += [0, (-n) % d]
    return F.pad(x, pads) if any(pads) else x


def show_snakes(
    model: Any,
    image_files: Sequence[str],
    output: str | Path,
    stage: int | None = None,
    slice_index: int | None = None,
    points: int = DEFAULT_POINTS,
    window: Sequence[int] | None = None,
    seed: int = 0,
    dpi: int = 150,
) -> SnakePlot:
    """Draw the snakes of every DSConv at resolution ``stage`` of ``model`` over ``image_files``; write ``output``.

    ``stage``: resolution stage (0 = full resolution, ``s`` = the grid after ``s`` poolings); default: the
    highest-resolution stage that has DSConv layers.
    ``model``: a :class:`~nnunet_tubeconv.deploy.model_folder.TrainedModel`. ``slice_index``: slice along the first
    (transposed) axis of a 3D image; default: its middle slice (a 2D image has only one). ``window``:
    ``(row, col, height, width)`` in displayed pixels: snakes are picked inside it and the view is zoomed to it.
    Raises :class:`NoSnakesError` (a ``ValueError``) when there is nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    network = model.network
    layers = dsconv_layers(network)
    if not layers:
        raise NoSnakesError(
            f"the model ({model.trainer_name}, network {model.configuration_manager.network_arch_class_name}) has no "
            "DSConv layer, so there are no snakes to draw; show-snakes needs a model trained with a trainer that uses "
            "dynamic snake convolutions (nnUNetTrainerDSConv, nnUNetTrainerTubeConv or a subclass)"
        )
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    pm, cm, dj = model.plans_manager, model.configuration_manager, model.dataset_json
    files = _find_channel_files(image_files, len(dj.get("channel_names", dj.get("modality", {"0": ""}))),
                                dj.get("file_ending", ""))
    reader = pm.image_reader_writer_class()
    original, props = reader.read_images(files)  # (C, Z, Y, X) in the reader's layout
    preprocessor = cm.preprocessor_class(verbose=False)
    pre, _, props = preprocessor.run_case_npy(original.copy(), None, copy.deepcopy(props), pm, cm, dj)
    shown = original.transpose([0, *[i + 1 for i in pm.transpose_forward]])[0]  # (Z, Y, X) as the network sees it
    net_dim = model.dim
    strides = cm.network_arch_init_kwargs.get("strides", [[1] * net_dim])
    cumulative = cumulative_strides(strides, net_dim)
    divisor = cumulative[-1]

    n_slices = pre.shape[1]
    if slice_index is not None and not 0 <= slice_index < shown.shape[0]:
        raise ValueError(f"slice {slice_index} is outside the image's {shown.shape[0]} slices (axis 0 after transpose)")
    z_start = props["bbox_used_for_cropping"][0][0]
    if net_dim == 3:
        scale_z = pre.shape[1] / props["shape_after_cropping_and_before_resampling"][0]
        z_orig = shown.shape[0] // 2 if slice_index is None else slice_index
        z_pre = int(np.clip(round((z_orig - z_start + 0.5) * scale_z - 0.5), 0, n_slices - 1))
        depth = min(int(cm.patch_size[0]), n_slices)
        z0 = int(np.clip(z_pre - depth // 2, 0, n_slices - depth))
        x = torch.from_numpy(np.ascontiguousarray(pre[None, :, z0:z0 + depth])).float()
    else:
        z_orig = slice_index
        if z_orig is None:  # a 2D image: its only slice
            z_orig = z_start + n_slices // 2
        z_pre = int(np.clip(z_orig - z_start, 0, n_slices - 1))
        z0 = z_pre
        x = torch.from_numpy(np.ascontiguousarray(pre[None, :, z_pre])).float()
    valid_shape = list(x.shape[2:])
    x = pad_to(x, divisor)

    logits, captured = forward_capturing_inputs(network, x, layers)
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    mask, prob = _foreground(logits, model.plans_manager.get_label_manager(dj))
    valid = np.zeros_like(mask)
    valid[tuple(slice(0, n) for n in valid_shape)] = True
    mask &= valid
    prob = np.where(valid, prob, -1.0)

    by_stage: dict[int, list[str]] = {}
    for name, _ in layers:
        by_stage.setdefault(stage_of(captured[name].shape[2:], x.shape[2:], cumulative), []).append(name)
    if stage is None:
        stage = min(by_stage)
    if stage not in by_stage:
        raise NoSnakesError(f"no DSConv works at stage {stage}; stages with DSConv layers: {sorted(by_stage)}")
    names = by_stage[stage]
    cum = np.asarray(cumulative[stage])

    # the displayed plane: rows/cols = the last two network axes; in 3D the plane at z_pre inside the window
    local_z = z_pre - z0
    plane_mask = mask[local_z] if net_dim == 3 else mask
    plane_prob = prob[local_z] if net_dim == 3 else prob
    pre_shape = pre.shape[1:]

    def to_display(net_coords: np.ndarray) -> np.ndarray:
        """(..., net_dim) network-input voxel coords -> (..., 2) (row, col) in the displayed image."""
        c = net_coords.astype(np.float64)
        if net_dim == 3:
            full = c.copy()
            full[..., 0] += z0
        else:
            full = np.concatenate([np.full(c.shape[:-1] + (1,), float(z_pre)), c], axis=-1)
        return preprocessed_to_original(full, props, pre_shape)[..., 1:]

    def in_plane(positions: np.ndarray) -> np.ndarray:
        return positions if net_dim == 2 else np.concatenate([np.full((len(positions), 1), local_z), positions], 1)

    image2d = shown[int(z_orig)]
    region = np.ones_like(plane_mask)
    region &= plane_prob >= 0  # not padding
    if window is not None:
        r0, c0, h, w = (int(v) for v in window)
        if h < 1 or w < 1:
            raise ValueError(f"window height and width must be >= 1, got {window}")
        everywhere = np.argwhere(region)
        disp = to_display(in_plane(everywhere))
        inside = (disp[:, 0] >= r0) & (disp[:, 0] < r0 + h) & (disp[:, 1] >= c0) & (disp[:, 1] < c0 + w)
        region[:] = False
        region[tuple(everywhere[inside].T)] = True
        if not region.any():
            raise ValueError(f"window {list(window)} does not overlap the image (shape {image2d.shape})")
    cand = np.argwhere(plane_mask & region)  # full-resolution in-plane positions (network grid)
    selection = "predicted foreground"
    if len(cand) == 0:
        # e.g. an early checkpoint: fall back to the positions the network finds most vessel-like
        where = np.argwhere(region)
        order = np.argsort(-plane_prob[region], kind="stable")[: max(10 * points, 100)]
        cand = where[order]
        selection = "highest predicted foreground probability (no foreground predicted here)"
    cand = in_plane(cand)
    # stage-grid positions: the cell holding each foreground voxel (unique), spread out
    cells = np.unique(cand // cum, axis=0)
    picked = cells[spread_points(cells, points, seed)]

    result = SnakePlot(path=Path(output), stage=stage, slice_index=int(z_orig), image=image2d, network_input=x,
                       stages_available=sorted(by_stage), selection=selection)
    blocks: dict[str, list[str]] = {}
    for name in names:
        blocks.setdefault(block_of(network, name), []).append(name)
    modules = dict(layers)
    for block, members in blocks.items():
        for name in members:
            layer = modules[name]
            with torch.no_grad():
                coords = layer.snake_coordinates(captured[name])[0].numpy()  # (K, d, *S_stage)
            sel = coords[(slice(None), slice(None), *picked.T)]  # (K, d, P)
            sel = np.moveaxis(sel, -1, 0)  # (P, K, d)
            result.layers.append(SnakeLayer(name=name, block=block, morph_axis=int(layer.axis), positions=picked,
                                            coords=sel, display=to_display(sel * cum)))

    fig = _draw(result, blocks, window, net_dim)
    result.path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(result.path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return result


def _draw(result: SnakePlot, blocks: dict[str, list[str]], window, net_dim: int):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(blocks)
    img = result.image.astype(np.float64)
    lo, hi = np.percentile(img, [0.5, 99.5])
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 6), squeeze=False)
    axis_names = ("rows", "columns") if net_dim == 2 else ("slices", "rows", "columns")
    by_name = {layer.name: layer for layer in result.layers}
    for ax, (block, members) in zip(axes[0], blocks.items()):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        for name in members:
            layer = by_name[name]
            colour = AXIS_COLOURS[layer.morph_axis % len(AXIS_COLOURS)]
            lines = []
            for snake in layer.display:
                (line,) = ax.plot(snake[:, 1], snake[:, 0], "-o", color=colour, lw=1.0, ms=1.8, alpha=0.9)
                lines.append(line)
            centre = layer.display[:, layer.display.shape[1] // 2]
            ax.plot(centre[:, 1], centre[:, 0], "o", color="white", ms=2.2, mec="black", mew=0.3)
            # read back what the figure holds, (row, col) per point, for the caller's checks
            layer.plotted = np.stack([np.stack([ln.get_ydata(), ln.get_xdata()], axis=-1) for ln in lines])
        # points outside the image are sampled clamped onto its border; the view stays on the image
        r0, c0, h, w = window if window is not None else (0, 0, *img.shape)
        ax.set_xlim(max(c0, 0) - 0.5, min(c0 + w, img.shape[1]) - 0.5)
        ax.set_ylim(min(r0 + h, img.shape[0]) - 0.5, max(r0, 0) - 0.5)
        ax.set_title(f"{block}  (stage {result.stage})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        present = sorted({by_name[m].morph_axis for m in members})
        handles = [Line2D([], [], color=AXIS_COLOURS[a % len(AXIS_COLOURS)], marker="o", ms=3,
                          label=f"morph axis {a} ({axis_names[a]})") for a in present]
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.7)
    fig.suptitle(f"DSConv sample points at {len(result.layers[0].positions)} positions ({result.selection}), "
                 f"slice {result.slice_index}", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_tubeconv.deploy.model_folder import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("images", metavar="IMAGE", nargs="+",
                        help="input image file(s) in the data set's format, one per channel (CASE_0000.nii.gz ...)")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("--stage", type=int, default=None,
                        help="resolution stage whose DSConv layers to draw (0 = full resolution; default: the "
                        "highest-resolution stage that has DSConv layers)")
    parser.add_argument("--slice", type=int, default=None, dest="slice_index",
                        help="slice index along the first (transposed) image axis (3D images)")
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS, help="number of snakes per layer")
    parser.add_argument("--window", type=int, nargs=4, default=None, metavar=("ROW", "COL", "HEIGHT", "WIDTH"),
                        help="draw snakes only inside this region of the displayed image and zoom to it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the position sampling")
    parser.add_argument("--dpi", type=int, default=150, help="resolution of the PNG")


def run(args: argparse.Namespace) -> int:
    from nnunet_tubeconv.deploy.model_folder import load_trained_model, resolve_model_folder

    # a ModelFolderError or NoSnakesError (ValueErrors) is reported by the CLI with exit status 2
    folder = resolve_model_folder(args.model_folder, args.fold, args.trainer, args.plans, args.configuration,
                                  args.checkpoint)
    model = load_trained_model(folder, args.configuration)
    result = show_snakes(model, args.images, args.output, stage=args.stage, slice_index=args.slice_index,
                         points=args.points, window=args.window, seed=args.seed, dpi=args.dpi)
    print(f"wrote {result.path}: {len(result.layers)} DSConv layer(s) at stage {result.stage} "
          f"(stages with DSConv: {result.stages_available}), {len(result.layers[0].positions)} snakes each at "
          f"{result.selection}")
    return 0

"""Memory of a TubeUNet's training step: what autograd keeps for backward, counted and measured.

Two halves that check each other (tests/unit/test_architectures.py, tests/unit/test_arch_contract.py):

* **Counting** (:func:`network_saved_elements`, behind every ``compute_conv_feature_map_size`` of
  :mod:`nnunet_tubeconv.architectures.unet`): tensor *elements* that a training-mode forward saves for backward, per
  batch element, de-duplicated by storage, parameters excluded, without running anything. It walks the network's
  stages in forward order and asks each block for its own ``compute_conv_feature_map_size``; a tensor that two
  modules keep (the output of one is the input of the next) counts once.
* **Measuring** (:class:`SavedTensors`, :func:`measure_saved_tensors`): the one ``saved_tensors_hooks`` recorder of
  the package, used by the tests, the planner's calibration and the benchmarks. It records exactly that quantity,
  in elements and in bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn
from torch.nn.modules.dropout import _DropoutNd
from typing_extensions import Self

from nnunet_tubeconv.blocks import DFF
from nnunet_tubeconv.blocks.utils import conv_op_to_dim, conv_output_size, numel


# ----------------------------------------------------------------------------------------------------------------
# counting
# ----------------------------------------------------------------------------------------------------------------
def nonlin_saves_result(nonlin: type | None, nonlin_kwargs: dict | None) -> bool:
    """In-place ReLU-like nonlinearities keep their result for backward (their input is overwritten)."""
    return nonlin is not None and bool((nonlin_kwargs or {}).get("inplace", False))


def _elements(channels: int, size: Sequence[int]) -> int:
    return int(channels) * numel(size)


def _plain_conv_account(block: ConvDropoutNormReLU, out_elems: int) -> tuple[int, bool]:
    """Elements a ConvDropoutNormReLU saves besides its input, and whether it saves its own output.

    conv saves its input (counted by the caller); dropout saves an element mask (channel dropout a negligible
    ``(B, C)`` one); a norm saves its input; an in-place nonlinearity saves its result, another one its input.
    """
    saved, current_saved = 0, False
    for op in list(block.all_modules)[1:]:
        if isinstance(op, _DropoutNd):
            if type(op) is nn.Dropout or type(op) is nn.AlphaDropout:
                saved += out_elems
            current_saved = False
        elif op is getattr(block, "nonlin", None):
            if not current_saved:
                saved += out_elems
            current_saved = bool(getattr(op, "inplace", False))
        else:  # norm layers keep their input
            if not current_saved:
                saved += out_elems
            current_saved = False
    return saved, current_saved


class _Accountant:
    """Adds up what a chain of modules saves for backward, counting a tensor saved by two modules once.

    Every module here saves its input (a convolution, a norm, a gate that multiplies its input); a block's own
    ``compute_conv_feature_map_size`` includes that input, so it is subtracted when the producer already saved it.
    """

    def __init__(self) -> None:
        self.total = 0

    def module(self, module: nn.Module, size: Sequence[int], in_elems: int, in_saved: bool) -> None:
        self.total += int(module.compute_conv_feature_map_size(list(size))) - (in_elems if in_saved else 0)

    def tensor(self, elems: int) -> None:
        self.total += int(elems)

    def convs(self, convs: Iterable[nn.Module], size: list[int], strides: Sequence[Sequence[int]], kernel,
              channels: int, in_elems: int, in_saved: bool, drop_in_saves_output: bool
              ) -> tuple[list[int], int, bool]:
        """A stack of convolutions (plain or drop-in blocks); returns (output size, its elements, already saved)."""
        for conv, stride in zip(convs, strides):
            out_size = list(conv_output_size(size, kernel, stride))
            out_elems = _elements(channels, out_size)
            if isinstance(conv, ConvDropoutNormReLU):
                extra, saves_out = _plain_conv_account(conv, out_elems)
                self.tensor((0 if in_saved else in_elems) + extra)
            else:
                self.module(conv, size, in_elems, in_saved)
                saves_out = drop_in_saves_output
            size, in_elems, in_saved = out_size, out_elems, saves_out
        return size, in_elems, in_saved


def _account_encoder(encoder: Any, acc: _Accountant, input_size: Sequence[int]) -> list[tuple[list[int], bool]]:
    """Add a TubeEncoder's saved elements to ``acc``; return per stage (output size, output already saved)."""
    size = list(input_size)
    in_elems, in_saved = _elements(encoder.stages[0][0].convs[0].input_channels, size), False
    out = []
    for s, stage in enumerate(encoder.stages):
        kernel = maybe_convert_scalar_to_list(encoder.conv_op, encoder.kernel_sizes[s])
        convs = stage[0].convs
        strides = [encoder.strides[s]] + [[1] * len(size)] * (len(convs) - 1)
        size, in_elems, in_saved = acc.convs(convs, size, strides, kernel, encoder.output_channels[s], in_elems,
                                             in_saved, encoder._drop_in_saves_output)
        for m in list(stage)[1:]:  # DLK blocks, scSE: shape-preserving, output not kept by the block
            acc.module(m, size, in_elems, in_saved)
            in_saved = False
        out.append((size, in_saved))
    return out


def _account_decoder(decoder: Any, acc: _Accountant, encoder_out: list[tuple[list[int], bool]],
                     drop_in_saves_output: bool) -> None:
    """Add a TubeDecoder's saved elements, its logits included, to ``acc``."""
    enc = decoder.encoder
    n = len(decoder.stages)
    size, saved = encoder_out[-1]
    for i in range(n):
        channels = enc.output_channels[-(i + 2)]
        skip_size, _ = encoder_out[-(i + 2)]
        if not saved:  # the transposed convolution keeps its input
            acc.tensor(_elements(enc.output_channels[-(i + 1)], size))
        size = list(skip_size)
        up_elems = _elements(channels, size)
        if isinstance(decoder.fusions[i], DFF):
            # DFF's estimate includes both its inputs; the skip is already kept by the encoder's next stage
            acc.module(decoder.fusions[i], size, up_elems, False)
            acc.tensor(-up_elems)
            in_elems, in_saved = up_elems, False
        else:
            in_elems, in_saved = 2 * up_elems, False  # torch.cat keeps nothing
        convs = decoder.stages[i].convs  # stride 1 and same padding: the size does not change
        ones = [1] * len(size)
        size, in_elems, in_saved = acc.convs(convs, size, [ones] * len(convs), ones, channels, in_elems, in_saved,
                                             drop_in_saves_output)
        if not isinstance(decoder.attention[i], nn.Identity):
            acc.module(decoder.attention[i], size, in_elems, in_saved)
            in_saved = False
        if decoder.deep_supervision or i == n - 1:
            if not in_saved:  # the segmentation head keeps its input
                acc.tensor(in_elems)
                in_saved = True
            acc.tensor(_elements(decoder.num_classes, size))  # the logits, kept by the loss until backward
        saved = in_saved


def _account_basic_block(block: BasicBlockD, acc: _Accountant, size: list[int], kernel, in_elems: int,
                         in_saved: bool, drop_in_saves_output: bool) -> tuple[list[int], int, bool]:
    """A ResNet-D BasicBlockD (conv1, conv2 or their drop-ins; residual path; in-place addition; ``nonlin2``).

    The block's input is kept by conv1 (a convolution or a block counting its input), so the residual path's
    average pooling adds nothing; its 1x1 projection keeps its input (the pooled tensor, or the block input) and its
    norm's input. ``out += residual`` keeps nothing; ``nonlin2`` keeps its result (in place) or its input.
    """
    channels = block.output_channels
    ones = [1] * len(size)
    mid_size, mid_elems, mid_saved = acc.convs([block.conv1], size, [block.stride], kernel, channels, in_elems,
                                               in_saved, drop_in_saves_output)
    # conv2 (or a drop-in for it) ends with its norm: its output is not kept by it
    out_size, out_elems, _ = acc.convs([block.conv2], mid_size, [ones], kernel, channels, mid_elems, mid_saved,
                                       False)
    if isinstance(block.skip, nn.Sequential):
        cur_elems, cur_saved = in_elems, True
        for op in block.skip:
            if isinstance(op, ConvDropoutNormReLU):
                extra, _ = _plain_conv_account(op, _elements(channels, out_size))
                acc.tensor((0 if cur_saved else cur_elems) + extra)
            else:  # average pooling keeps the block's input, already counted
                cur_elems, cur_saved = _elements(block.input_channels, out_size), False
    saved = False
    if isinstance(block.nonlin2, nn.Module):
        acc.tensor(out_elems)
        saved = bool(getattr(block.nonlin2, "inplace", False))
    return out_size, out_elems, saved


def _account_residual_encoder(encoder: ResidualEncoder, acc: _Accountant, input_size: Sequence[int]
                              ) -> list[tuple[list[int], bool]]:
    """Add a (Tube)ResidualEncoder's saved elements to ``acc``; return per stage (output size, output saved)."""
    size = list(input_size)
    ones = [1] * len(size)
    stem = encoder.stem.convs
    in_elems, in_saved = _elements(stem[0].input_channels, size), False
    kernel0 = maybe_convert_scalar_to_list(encoder.conv_op, encoder.kernel_sizes[0])
    size, in_elems, in_saved = acc.convs(stem, size, [ones] * len(stem), kernel0, stem[-1].output_channels, in_elems,
                                         in_saved, encoder._drop_in_saves_output)
    out = []
    for s, stage in enumerate(encoder.stages):
        kernel = maybe_convert_scalar_to_list(encoder.conv_op, encoder.kernel_sizes[s])
        for m in stage.blocks:
            if isinstance(m, BasicBlockD):
                size, in_elems, in_saved = _account_basic_block(m, acc, size, kernel, in_elems, in_saved,
                                                                encoder._drop_in_saves_output)
            else:  # DLK blocks, scSE: shape-preserving, output not kept by the block
                acc.module(m, size, in_elems, in_saved)
                in_saved = False
        out.append((size, in_saved))
    return out


def _encoder_accountant(encoder: Any) -> Callable:
    return _account_residual_encoder if isinstance(encoder, ResidualEncoder) else _account_encoder


def encoder_saved_elements(encoder: Any, input_size: Sequence[int]) -> int:
    """Elements saved for backward per batch element by a TubeEncoder or TubeResidualEncoder alone (input included)."""
    acc = _Accountant()
    _encoder_accountant(encoder)(encoder, acc, input_size)
    return acc.total


def decoder_saved_elements(decoder: Any, input_size: Sequence[int]) -> int:
    """Elements saved per batch element by a TubeDecoder, plus its logits (``input_size``: the encoder's input)."""
    encoder_out = _encoder_accountant(decoder.encoder)(decoder.encoder, _Accountant(), input_size)
    acc = _Accountant()
    _account_decoder(decoder, acc, encoder_out, decoder.encoder._drop_in_saves_output)
    return acc.total


def network_saved_elements(network: Any, input_size: Sequence[int]) -> int:
    """Elements a TubeUNet's or TubeResEncUNet's training-mode forward keeps for backward, per batch element, logits
    included."""
    dim = conv_op_to_dim(network.encoder.conv_op)
    if len(input_size) != dim:
        raise ValueError(f"input_size must have {dim} spatial entries (no batch or channel axis), got {input_size}")
    acc = _Accountant()
    encoder_out = _encoder_accountant(network.encoder)(network.encoder, acc, input_size)
    _account_decoder(network.decoder, acc, encoder_out, network.encoder._drop_in_saves_output)
    return acc.total


# ----------------------------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------------------------
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


def measure_saved_tensors(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> tuple[int, int]:
    """Run ``fn()`` under :class:`SavedTensors` and return ``(elements, bytes)`` that autograd saved for backward.

    Let ``fn`` return its output: the graph (and so every saved storage) then lives until the counting is done.
    ``exclude``: tensors whose storages are not counted (pass the module's parameters).
    """
    with SavedTensors(exclude=exclude) as rec:
        result = fn()
    counts = rec.elements, rec.nbytes
    del result
    return counts

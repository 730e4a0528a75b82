"""Concurrent spatial and channel squeeze & excitation (scSE).

Roy, Navab and Wachinger, "Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks",
MICCAI 2018 (arXiv 1803.02579); SPEC-blocks.md section 5. One N-D implementation, dimension from ``conv_op``; the
channel squeeze pools over every spatial axis (a 3D block that pools per slice is a known defect elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnunet_tubeconv.blocks._utils import as_tuple, check_channels, check_input, conv_op_to_dim, numel

SCSE_MODES = ("add", "max")


class SCSE(nn.Module):
    """``x: (B, C, *S) -> (B, C, *S)``.

    * cSE: ``z = sigmoid(W2 relu(W1 GAP(x)))`` with ``W1: C -> max(1, C // reduction)``, ``W2`` back to ``C``
      (1x1 convolutions with bias, i.e. the paper's fully connected layers); output ``x * z`` per channel.
    * sSE: ``q = sigmoid(conv1x1_{C->1}(x))``; output ``x * q`` per voxel.
    * ``mode="add"``: ``x z + x q``; ``mode="max"``: element-wise ``max(x z, x q)`` (both studied in the paper).
    """

    def __init__(self, conv_op: type, channels: int, reduction: int = 2, mode: str = "add") -> None:
        super().__init__()
        self.dim = conv_op_to_dim(conv_op)
        self.channels = check_channels("channels", channels)
        self.reduction = check_channels("reduction", reduction)
        if mode not in SCSE_MODES:
            raise ValueError(f"unknown scSE mode {mode!r}: allowed are {', '.join(map(repr, SCSE_MODES))}")
        self.mode = mode
        self.bottleneck = max(1, channels // reduction)
        self.squeeze = conv_op(channels, self.bottleneck, 1)
        self.excite = conv_op(self.bottleneck, channels, 1)
        self.spatial = conv_op(channels, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bottleneck={self.bottleneck}, mode={self.mode!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, self.channels, "SCSE")
        pooled = x.mean(tuple(range(2, x.ndim)), keepdim=True)  # (B, C, 1, ...): every spatial axis at once
        z = torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))
        q = torch.sigmoid(self.spatial(x))
        if self.mode == "add":
            # x z + x q without the full-size (z + q) temporary that x * (z + q) would keep for backward
            return torch.addcmul(x * z, x, q)
        return torch.maximum(x * z, x * q)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element in a training forward, input included.

        ``x`` (``C n``) and the spatial gate (``n``); "max" also keeps both products (``2 C n``). Plus the pooled
        vector, the bottleneck activation and the channel gate (``2C + C/r``).
        """
        n = numel(as_tuple("input_size", input_size, self.dim))
        c = self.channels
        small = 2 * c + self.bottleneck
        if self.mode == "add":
            return c * n + n + small
        return 3 * c * n + n + small

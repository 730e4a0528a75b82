"""Dynamic feature fusion (DFF) of decoder features and a skip connection.

Yang et al., "D-Net: Dynamic Large Kernel with Dynamic Feature Fusion for Volumetric Medical Image Segmentation",
arXiv 2403.10674; maths: docs/explanation/maths.md section 4. Replaces nnU-Net's "concatenate the skip, then
convolve" with a gated fusion back to ``C`` channels. One N-D implementation, dimension from ``conv_op``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_tubeconv.blocks.utils import as_tuple, check_channels, check_input, conv_op_to_dim, numel


class DFF(nn.Module):
    """``forward(x, skip)``: ``(B, C, *S), (B, C, *S) -> (B, C, *S)``.

    1. ``F = concat(x, skip)`` (``2C``);
    2. channel gate ``F = F * sigmoid(conv1x1_{2C->2C, no bias}(GAP(F)))``, GAP over every spatial axis;
    3. ``F = conv1x1_{2C->C, no bias}(F)``;
    4. spatial gate ``F = F * sigmoid(conv1x1_{C->1}(x) + conv1x1_{C->1}(skip))``.

    Steps 1-3 are computed as one per-sample matrix product, ``(W_reduce diag(gate)) @ [x; skip]``: identical
    maths, but neither the concatenation nor the gated ``2C``-channel tensor is materialised or kept for
    backward (3 instead of 7 full-size maps saved). The parameters are still the 1x1 convolutions the paper
    names, so the state dict and weight initialisation are those of the plain formulation.
    """

    def __init__(self, conv_op: type, channels: int) -> None:
        super().__init__()
        self.dim = conv_op_to_dim(conv_op)
        self.channels = check_channels("channels", channels)
        self.channel_attention = conv_op(2 * channels, 2 * channels, 1, bias=False)
        self.reduce = conv_op(2 * channels, channels, 1, bias=False)
        self.spatial_x = conv_op(channels, 1, 1)
        self.spatial_skip = conv_op(channels, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, self.channels, "DFF (x)")
        check_input(skip, self.dim, self.channels, "DFF (skip)")
        if x.shape != skip.shape:
            raise ValueError(f"DFF needs x and skip of the same shape, got {tuple(x.shape)} and {tuple(skip.shape)}")
        b, c = x.shape[:2]
        spatial = tuple(range(2, x.ndim))
        pooled = torch.cat((x.mean(spatial), skip.mean(spatial)), 1)  # GAP(concat(x, skip)): (B, 2C)
        gate = torch.sigmoid(F.linear(pooled, self.channel_attention.weight.flatten(1)))  # (B, 2C)
        weight = self.reduce.weight.flatten(1).unsqueeze(0) * gate.unsqueeze(1)  # (B, C, 2C)
        fused = torch.baddbmm(torch.bmm(weight[:, :, :c], x.reshape(b, c, -1)), weight[:, :, c:],
                              skip.reshape(b, c, -1))  # (B, C, n)
        attention = torch.sigmoid(self.spatial_x(x) + self.spatial_skip(skip))  # (B, 1, *S)
        return fused.view(x.shape) * attention

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element in a training forward, both inputs included.

        ``x`` and ``skip`` (``C n`` each, kept by the products and the spatial convolutions), the fused map
        (``C n``) and the spatial gate (``n``), plus the per-sample pooled vector, channel gate and gated
        reduction matrix (``2C + 2C + 2C^2``).
        """
        n = numel(as_tuple("input_size", input_size, self.dim))
        c = self.channels
        return 3 * c * n + n + 4 * c + 2 * c * c

"""Dynamic large kernel (DLK) and the D-Net block around it.

Yang et al., "D-Net: Dynamic Large Kernel with Dynamic Feature Fusion for Volumetric Medical Image Segmentation",
arXiv 2403.10674. The maths is docs/explanation/maths.md section 3. One N-D implementation: the dimension comes
from ``conv_op`` (``nn.Conv2d`` or ``nn.Conv3d``).

The paper and the authors' two code versions disagree on the spatial selection (step 4 there). ``mode="paper"``
(default) weights each branch by its own map, ``concat(a1 * w0, a2 * w1)``; ``mode="authors2025"`` multiplies the
whole concatenation by ``w0 + w1`` as the authors' 2025 code does. The mode that ran is stored in ``DLK.mode`` and
shown in ``repr``, so every benchmark records it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_tubeconv.blocks.utils import as_tuple, check_channels, check_input, conv_op_to_dim, numel, tracing
from nnunet_tubeconv.vocabulary import DLK_MODES


def _check_mode(mode: str) -> str:
    if mode not in DLK_MODES:
        raise ValueError(f"unknown DLK mode {mode!r}: allowed are {', '.join(map(repr, DLK_MODES))}")
    return mode


def _spatial_size(input_size: Sequence[int], dim: int) -> tuple[int, ...]:
    return as_tuple("input_size", input_size, dim)


def _fast_layout(x: torch.Tensor) -> torch.Tensor:
    """On CPU, ``x`` in channels-last layout, for the input of a k > 1 convolution: oneDNN's depth-wise, dilated
    and few-channel kernels run 2-4x faster (forward + backward) in it than in the default layout. (A 1x1
    convolution returns the default layout whatever it is given, hence a conversion before each large kernel.)
    Other devices keep their layout, and so does a graph export (:func:`~nnunet_tubeconv.blocks.utils.tracing`):
    ONNX tensors have no memory format, and the TorchScript exporter refuses ``contiguous(memory_format=...)``."""
    if x.device.type != "cpu" or tracing():
        return x
    return x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)


def _layout_like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out`` in the default layout when ``x`` was in it, so the block does not change its caller's layout."""
    return out.contiguous() if x.is_contiguous() else out


class DLK(nn.Module):
    """Dynamic large kernel: two depth-wise large kernels in series, selected per voxel, gated per channel.

    ``x: (B, C, *S) -> (B, C, *S)``, residual included (docs/explanation/maths.md section 3, steps 1-6):

    1. ``u = conv1x1(x)``: ``C -> C/2``;
    2. ``a1 = dwconv_5(u)``, ``a2 = dwconv_7,dilation 3(a1)`` (receptive fields 5 and 23), ``C/2`` channels each;
    3. ``A = concat(a1, a2)``;
    4. ``w = sigmoid(conv_7(concat(mean_c(A), max_c(A))))`` (2 maps); ``A' = concat(a1 w0, a2 w1)`` ("paper") or
       ``A' = A (w0 + w1)`` ("authors2025");
    5. ``A'' = A' * sigmoid(conv1x1(GAP(A')))``, GAP over every spatial axis;
    6. ``out = A'' + x``.

    ``channels`` must be even: step 1 halves them and step 3 concatenates two halves back to ``C`` for the residual.
    Rounding would break the residual, and a silent extra projection would no longer be D-Net, so odd ``C`` raises.
    """

    def __init__(self, conv_op: type, channels: int, mode: str = "paper") -> None:
        super().__init__()
        self.dim = conv_op_to_dim(conv_op)
        self.channels = check_channels("channels", channels)
        if channels % 2:
            raise ValueError(
                f"DLK needs an even number of channels (step 1 reduces C to C/2 and step 3 concatenates two C/2 "
                f"branches back to C for the residual), got channels={channels}"
            )
        self.mode = _check_mode(mode)
        half = channels // 2
        self.reduce = conv_op(channels, half, 1)
        self.dw_small = conv_op(half, half, 5, padding=2, groups=half)
        self.dw_large = conv_op(half, half, 7, padding=9, dilation=3, groups=half)
        self.spatial_select = conv_op(2, 2, 7, padding=3)
        self.channel_gate = conv_op(channels, channels, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, self.channels, "DLK")
        spatial = tuple(range(2, x.ndim))
        a1 = self.dw_small(_fast_layout(self.reduce(x)))
        a2 = self.dw_large(a1)
        a = torch.cat((a1, a2), 1)
        # max with indices keeps only the indices for backward; amax would also keep the whole of A
        stats = torch.cat((a.mean(1, keepdim=True), a.max(1, keepdim=True).values), 1)
        w = torch.sigmoid(self.spatial_select(_fast_layout(stats)))
        if self.mode == "paper":
            a = torch.cat((a1 * w[:, :1], a2 * w[:, 1:]), 1)
        else:
            a = a * (w[:, :1] + w[:, 1:])
        gate = torch.sigmoid(self.channel_gate(a.mean(spatial, keepdim=True)))
        return _layout_like(torch.addcmul(x, a, gate), x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element in a training forward, input included.

        ``input_size``: spatial size of ``x``. Count (``n`` voxels, ``C`` channels): ``x``, ``u``, ``a1`` (inputs
        of the three convolutions), ``a2`` (paper: kept by ``a2 * w1``), the channel max indices (``n``), the
        2-channel statistics and the selection maps (``2n`` each), ``A'`` (kept by the channel gate) and the
        pooled vector and gate (``C`` each). authors2025 keeps the whole ``A`` and ``w0 + w1`` instead of ``a2``.
        """
        n = numel(_spatial_size(input_size, self.dim))
        c, half = self.channels, self.channels // 2
        common = c * n + 2 * half * n + n + 4 * n + c * n + 2 * c
        if self.mode == "paper":
            return common + half * n
        return common + c * n + n


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, *S)`` (ConvNeXt's "channels_first" LayerNorm), eps 1e-6."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = check_channels("channels", channels)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer_norm normalises trailing axes: move C last (a view; free for a channels-last x), normalise, move back
        y = F.layer_norm(x.movedim(1, -1), (self.channels,), self.weight, self.bias, self.eps)
        return _layout_like(y.movedim(-1, 1), x)


class DLKBlock(nn.Module):
    """The D-Net block at constant width: ``x + g1 * Module(LN(x))`` then ``x + g2 * MLP(LN(x))``.

    ``x: (B, C, *S) -> (B, C, *S)``. Module = conv1x1 -> GELU -> :class:`DLK` -> conv1x1, plus its input;
    MLP = conv1x1 (``C -> mlp_ratio * C``) -> depth-wise conv_3 -> GELU -> conv1x1 (back to ``C``). ``g1``, ``g2``
    are per-channel layer scales initialised to ``layer_scale_init_value`` (1e-6: the block starts close to the
    identity); LN is a channel LayerNorm; ``drop_path`` is the per-sample probability, in training, of dropping a
    residual branch (stochastic depth), survivors rescaled by ``1 / (1 - drop_path)``.
    Yang et al., arXiv 2403.10674; docs/explanation/maths.md section 3.

    Parameters keep the paper's form (1x1 convolutions, a channel LayerNorm module per branch). The MLP runs its
    1x1 convolutions as ``F.linear`` on channels-last views; on CPU the large kernels run channels-last. The
    output has the input's memory layout.
    """

    def __init__(self, conv_op: type, channels: int, mlp_ratio: float = 4, drop_path: float = 0.0,
                 layer_scale_init_value: float = 1e-6, dlk_mode: str = "paper") -> None:
        super().__init__()
        self.dim = conv_op_to_dim(conv_op)
        self.channels = check_channels("channels", channels)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0 \
                or not math.isfinite(mlp_ratio):
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be a probability in [0, 1), got {drop_path!r}")
        if isinstance(layer_scale_init_value, bool) or not isinstance(layer_scale_init_value, (int, float)) \
                or not layer_scale_init_value > 0 or not math.isfinite(layer_scale_init_value):
            raise ValueError(f"layer_scale_init_value must be a positive finite number, got {layer_scale_init_value!r}")
        self.mlp_ratio = mlp_ratio
        self.drop_path = float(drop_path)
        self.dlk_mode = _check_mode(dlk_mode)
        hidden = max(1, round(channels * mlp_ratio))
        self.hidden_channels = hidden

        self.norm1 = ChannelLayerNorm(channels)
        self.proj_in = conv_op(channels, channels, 1)
        self.act1 = nn.GELU()
        self.dlk = DLK(conv_op, channels, mode=dlk_mode)
        self.proj_out = conv_op(channels, channels, 1)
        self.gamma1 = nn.Parameter(torch.full((channels,), float(layer_scale_init_value)))

        self.norm2 = ChannelLayerNorm(channels)
        self.fc1 = conv_op(channels, hidden, 1)
        self.dwconv = conv_op(hidden, hidden, 3, padding=1, groups=hidden)
        self.act2 = nn.GELU()
        self.fc2 = conv_op(hidden, channels, 1)
        self.gamma2 = nn.Parameter(torch.full((channels,), float(layer_scale_init_value)))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, mlp_ratio={self.mlp_ratio}, drop_path={self.drop_path}, "
                f"dlk_mode={self.dlk_mode!r}")

    def _scale(self, gamma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Layer scale, times the stochastic-depth mask in training: (B or 1, C, 1, ...)."""
        scale = gamma.view(1, -1, *([1] * self.dim))
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            # one Bernoulli draw per sample; folding it into the (B, C, 1..) scale avoids a full-size masked copy
            mask = torch.empty((x.shape[0], 1) + (1,) * self.dim, dtype=x.dtype, device=x.device).bernoulli_(keep)
            scale = scale * (mask / keep)
        return scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, self.channels, "DLKBlock")
        x_in = x
        y = self.norm1(x)
        y = self.proj_out(self.dlk(self.act1(self.proj_in(y)))) + y
        x = torch.addcmul(x, y, self._scale(self.gamma1, x))
        return _layout_like(torch.addcmul(x, self._mlp(x), self._scale(self.gamma2, x)), x_in)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """LN -> fc1 -> depth-wise conv_3 -> GELU -> fc2, (B, C, *S) -> (B, C, *S) in channels-last layout.

        The 1x1 convolutions run as ``F.linear`` on the channels-last view that the LayerNorm produces anyway
        (as ConvNeXt does), so the hidden maps (``mlp_ratio`` times wider than ``x``) are never copied between
        layouts, and the depth-wise convolution gets them channels-last, its fast layout on CPU.
        """
        n = self.norm2
        t = F.layer_norm(x.movedim(1, -1), (self.channels,), n.weight, n.bias, n.eps)  # (B, *S, C)
        t = F.linear(t, self.fc1.weight.flatten(1), self.fc1.bias)  # (B, *S, hidden)
        t = self.act2(self.dwconv(t.movedim(-1, 1)))  # (B, hidden, *S)
        return F.linear(t.movedim(1, -1), self.fc2.weight.flatten(1), self.fc2.bias).movedim(-1, 1)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element in a training forward, input included.

        Token mixer: ``x`` and per-voxel mean/rstd (LayerNorm), LN output (proj_in), GELU input, the DLK (its own
        estimate, which includes its input), DLK output (proj_out), branch output (layer scale). MLP: ``x1``,
        mean/rstd, LN output (fc1), three ``hidden``-channel maps (dwconv, GELU, fc2 inputs), branch output.
        """
        size = _spatial_size(input_size, self.dim)
        n = numel(size)
        c, h = self.channels, self.hidden_channels
        mixer = c * n + 2 * n + c * n + c * n + self.dlk.compute_conv_feature_map_size(size) + c * n + c * n
        mlp = c * n + 2 * n + c * n + 3 * h * n + c * n
        drop = 2 * c if self.drop_path > 0 else 0  # the per-sample (C,) scales
        return mixer + mlp + drop

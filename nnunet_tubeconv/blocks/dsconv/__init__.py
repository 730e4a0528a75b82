"""Dynamic snake convolution (DSConv): the module users import, its functional form and its back-ends.

``from nnunet_tubeconv.blocks.dsconv import DSConv`` (or ``from nnunet_tubeconv.blocks import DSConv``). The
package is laid out bottom-up; each module imports only from the ones listed before it:

* ``maths``: the cumulative swing, the weight and row layouts, the chunking (shared by every back-end);
* ``cpu_backend`` (+ ``cpu_kernels.c``): the compiled CPU kernels, built on first use (scSE's kernels too);
* ``triton_backend`` (+ ``triton_kernels.py``): the Triton kernels for CUDA tensors;
* ``torch_backend``: the same maths in PyTorch operations, for every other device and dtype;
* ``traceable``: the same maths in plain operations that graph exports can hold (ONNX, TorchScript, torch.export);
* ``function``: ``SnakeConvFunction``, the autograd Function that picks a back-end;
* ``custom_ops``: that Function as a ``torch.library`` custom op, for ``torch.compile``;
* ``module``: :class:`DSConv` and :func:`snake_conv`, which choose between the Function, the custom op and the
  traceable form (``nnunet_tubeconv.blocks.utils.tracing`` / ``compiling``).

Maths, and the defects of the authors' code not copied: docs/explanation/maths.md section 1.
"""

from nnunet_tubeconv.blocks.dsconv.module import SWING_NORMS, DSConv, snake_conv

__all__ = ["SWING_NORMS", "DSConv", "snake_conv"]

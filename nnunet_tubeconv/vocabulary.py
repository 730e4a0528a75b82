"""The allowed values of the blocks' mode options, in one place (imports nothing, so torch-free code can use it).

The blocks (:mod:`nnunet_tubeconv.blocks`) check their ``mode`` arguments against these tuples, and the block
options of the network (:mod:`nnunet_tubeconv.architectures.options`) check ``dlk_mode`` / ``scse_mode`` against
the same tuples without importing torch. A new mode is added here, and nowhere else.
"""

from __future__ import annotations

#: D-Net's dynamic large kernel: "paper" weights each branch by its own spatial map, "authors2025" weights the
#: whole concatenation by the sum of the maps, as the authors' 2025 code does (docs/explanation/maths.md, DLK).
DLK_MODES: tuple[str, ...] = ("paper", "authors2025")
#: scSE: how the channel- and the spatial-excited maps combine, "add" (the paper's default) or element-wise "max".
SCSE_MODES: tuple[str, ...] = ("add", "max")
#: DSConv's swing branch: "stage" = tanh(norm(conv3(x))) with the stage's norm (GroupNorm for none / BatchNorm), the
#: DSCNet authors' form; "none" = tanh(conv3(x)), so that the zero-initialised swing starts straight and grows
#: (the snakes study, docs/studies/snakes.md; docs/explanation/maths.md section 1).
SWING_NORMS: tuple[str, ...] = ("stage", "none")

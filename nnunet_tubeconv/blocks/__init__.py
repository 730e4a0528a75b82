"""Tubular-structure blocks: plain ``nn.Module``s configured in dynamic-network-architectures' vocabulary.

Nothing here imports nnunetv2. The maths of every block, and the defects of the authors' code not copied, are in
docs/explanation/maths.md.
"""

from nnunet_tubeconv.blocks.deform import DeformConv
from nnunet_tubeconv.blocks.dff import DFF
from nnunet_tubeconv.blocks.dlk import DLK, DLKBlock
from nnunet_tubeconv.blocks.dscblock import DSCBlock
from nnunet_tubeconv.blocks.dsconv import DSConv
from nnunet_tubeconv.blocks.scse import SCSE

__all__ = [
    "DFF",
    "DLK",
    "SCSE",
    "DLKBlock",
    "DSCBlock",
    "DSConv",
    "DeformConv",
]

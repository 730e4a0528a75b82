"""``nnunet-tubeconv convert drive|stare|vesselnn|images|msd``: public tubular data sets into nnU-Net v2 raw format.

``drive`` (:mod:`nnunet_tubeconv.data.drive`) converts DRIVE retinal vessels from the original archive layout or the
NIfTI layout; ``stare`` (:mod:`nnunet_tubeconv.data.stare`) STARE with both observers; ``vesselnn``
(:mod:`nnunet_tubeconv.data.vesselnn`) the 3D two-photon stacks; ``images`` (:mod:`nnunet_tubeconv.data.images`) any
folder of image files with a folder of label files; ``msd`` (:mod:`nnunet_tubeconv.data.msd`) checks a Medical
Segmentation Decathlon task folder and runs nnU-Net's own MSD conversion.
"""

from __future__ import annotations

from nnunet_tubeconv.cli import NestedCommands
from nnunet_tubeconv.data import drive, images, msd, stare, vesselnn

_SOURCES = {
    "drive": (drive, "DRIVE retinal vessels (original archive or NIfTI layout) -> 2D nnU-Net raw data set"),
    "stare": (stare, "STARE retinal vessels, both observers (second in labelsTr_observer2) -> 2D nnU-Net raw data set"),
    "vesselnn": (vesselnn, "vesselNN two-photon stacks (multi-page TIFF, spacing from metadata) -> 3D nnU-Net raw"),
    "images": (images, "a folder of image files and a folder of label files (PNG/TIFF/JPEG) -> nnU-Net raw data set"),
    "msd": (msd, "Medical Segmentation Decathlon task folder (e.g. Task08_HepaticVessel) -> nnU-Net raw data set"),
}


_COMMANDS = NestedCommands("source", "SOURCE", _SOURCES)
add_arguments = _COMMANDS.add_arguments
run = _COMMANDS.run

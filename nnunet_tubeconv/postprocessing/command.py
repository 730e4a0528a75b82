"""``nnunet-tubeconv postprocess determine|apply``: topology-aware postprocessing for tubes.

``determine`` (:mod:`nnunet_tubeconv.postprocessing.determine`) chooses, per label, the size below which connected
components are removed, on a trained model folder's cross-validation predictions, and writes nnU-Net's
``postprocessing.pkl`` plus a readable ``postprocessing.json``; ``apply``
(:mod:`nnunet_tubeconv.postprocessing.apply`) applies a ``postprocessing.pkl`` to a folder of predictions, as stock
``nnUNetv2_apply_postprocessing`` does.
"""

from __future__ import annotations

from nnunet_tubeconv.cli import NestedCommands
from nnunet_tubeconv.postprocessing import apply, determine

_ACTIONS = {
    "determine": (determine, ("choose the postprocessing per label on a model folder's cross-validation predictions; "
                              "write postprocessing.pkl (nnU-Net's format) and postprocessing.json")),
    "apply": (apply, "apply a postprocessing.pkl to a folder of predictions (as nnUNetv2_apply_postprocessing)"),
}


_COMMANDS = NestedCommands("action", "ACTION", _ACTIONS)
add_arguments = _COMMANDS.add_arguments
run = _COMMANDS.run

"""``nnunet-tubeconv postprocess determine|apply``: topology-aware postprocessing for tubes.

``determine`` (:mod:`nnunet_tubeconv.postprocessing.determine`) chooses, per label, the size below which connected
components are removed, on a trained model folder's cross-validation predictions, and writes nnU-Net's
``postprocessing.pkl`` plus a readable ``postprocessing.json``; ``apply``
(:mod:`nnunet_tubeconv.postprocessing.apply`) applies a ``postprocessing.pkl`` to a folder of predictions, as stock
``nnUNetv2_apply_postprocessing`` does.
"""

from __future__ import annotations

import argparse

from nnunet_tubeconv.postprocessing import apply, determine

_ACTIONS = {
    "determine": (determine, ("choose the postprocessing per label on a model folder's cross-validation predictions; "
                              "write postprocessing.pkl (nnU-Net's format) and postprocessing.json")),
    "apply": (apply, "apply a postprocessing.pkl to a folder of predictions (as nnUNetv2_apply_postprocessing)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, (module, help_text) in _ACTIONS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(error_prog=p.prog)  # error lines name "nnunet-tubeconv postprocess determine"
        module.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return _ACTIONS[args.action][0].run(args)

"""Topology-aware postprocessing for tubes, chosen on cross-validation, in nnU-Net's own postprocessing format.

* :mod:`~nnunet_tubeconv.postprocessing.components`: the postprocessing functions themselves, plain functions of
  ``(segmentation, **kwargs)`` that nnU-Net's ``apply_postprocessing`` calls (``remove_small_components``);
* :mod:`~nnunet_tubeconv.postprocessing.determine`: the choice on a model folder's cross-validation predictions,
  written as nnU-Net's ``postprocessing.pkl`` plus a readable ``postprocessing.json``
  (``nnunet-tubeconv postprocess determine``);
* :mod:`~nnunet_tubeconv.postprocessing.apply`: a ``postprocessing.pkl`` applied to a folder of predictions
  (``nnunet-tubeconv postprocess apply``; stock ``nnUNetv2_apply_postprocessing`` does the same);
* :mod:`~nnunet_tubeconv.postprocessing.command`: the ``postprocess`` command with its two sub-commands.

Nothing here is imported by this ``__init__``: a ``postprocessing.pkl`` names its functions by module path, and
unpickling one should load no more than that module.
"""

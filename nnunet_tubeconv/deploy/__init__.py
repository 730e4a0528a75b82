"""Deployment of trained models: ONNX export, challenge bundles, snake visualisation.

* ``nnunet-tubeconv export-onnx`` (:mod:`~nnunet_tubeconv.deploy.onnx_export`): a trained model folder to ONNX with
  dynamic batch and spatial axes and nnU-Net's preprocessing parameters in the metadata;
* ``nnunet-tubeconv package`` (:mod:`~nnunet_tubeconv.deploy.package`): a self-contained inference bundle
  (nnU-Net's model zip, pinned requirements, ``predict.py``, Dockerfile) for challenge submission;
* ``nnunet-tubeconv show-snakes`` (:mod:`~nnunet_tubeconv.deploy.snakes`): the sample points of a model's dynamic
  snake convolutions (Qi et al., ICCV 2023) drawn over an image.

Model folders are loaded by :mod:`~nnunet_tubeconv.deploy.model_folder` exactly as nnU-Net's inference loads them.
Submodules import torch and nnU-Net lazily, so importing this package is cheap.
"""

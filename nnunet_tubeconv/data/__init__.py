"""Data sets in nnU-Net v2 raw format.

- :mod:`~nnunet_tubeconv.data.synthetic`: seeded 2D/3D branching vessel trees (``nnunet-tubeconv synth``).
- :mod:`~nnunet_tubeconv.data.drive`: DRIVE retinal vessels, original or NIfTI layout (``convert drive``).
- :mod:`~nnunet_tubeconv.data.msd`: Medical Segmentation Decathlon tasks via nnU-Net's converter (``convert msd``).

Nothing is imported here so that the CLI stays fast; import the sub-module you need.
"""

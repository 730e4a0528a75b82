"""Thin nnUNetTrainer subclasses; this folder is what nnUNet_extTrainer names."""

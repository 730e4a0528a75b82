"""nnunet-tubeconv: tubular-structure blocks for stock nnU-Net v2 and an honest benchmark of them."""

__version__ = "0.1.0"

"""The names of the shipped data sets, torch-free (command-line help reads them)."""

from __future__ import annotations

DIGITS = "digits"  # scikit-learn's 8x8 digits, upscaled (`images.load_digits`)
FASHION = "fashion-mnist"  # Fashion-MNIST idx files, captioned (`captions`)

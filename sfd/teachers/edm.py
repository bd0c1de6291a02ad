"""Adapter for a network that already is an EDM denoiser D(x, sigma, class_labels)."""

from __future__ import annotations

from torch import Tensor, nn

from sfd.teachers.base import Denoiser


class EDMDenoiser(Denoiser):
    """Wrap a module whose forward is already D(x, sigma, class_labels) -> x0_hat (EDM convention).

    Args:
        net: the preconditioned network; called as net(x, sigma, class_labels) with sigma (B,).
        sample_shape: (C, H, W) of one sample.
        num_classes: number of class labels (None for an unconditional net).
        null_class: label of the unconditional class, if any (enables guidance).
    """

    def __init__(
        self,
        net: nn.Module,
        sample_shape: tuple[int, int, int],
        num_classes: int | None = None,
        null_class: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.sample_shape = tuple(sample_shape)
        self.num_classes = num_classes
        self.null_class = null_class

    def denoise(self, x: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        return self.net(x, sigma, cond)

    @property
    def has_null_condition(self) -> bool:
        return self.null_class is not None

    def null_condition(self, cond: Tensor) -> Tensor:
        if self.null_class is None:
            return super().null_condition(cond)
        return cond.new_full(cond.shape, self.null_class)

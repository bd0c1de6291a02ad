"""Score Forgetting Distillation: data-free unlearning of classes and concepts in diffusion models."""

__version__ = "0.1.0"

"""The one-step generator G_θ(z, c) = D_θ(σ_init·z, σ_init, c) (docs/method.md §2), and what an
SFD checkpoint records about it, so that a checkpoint alone rebuilds the generator to ship.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sfd.core.checkpoint_files import load_checkpoint_safely
from sfd.core.guards import check_one_start
from sfd.errors import SFDConfigError, check_number
from sfd.teachers import denoiser_from_spec
from sfd.teachers.adapter_io import denoiser_from_adapter_spec
from sfd.teachers.adapters import ADAPTED_KIND
from sfd.teachers.base import Denoiser

GENERATOR_SPEC_KEY = "sfd_generator"  # checkpoint entry describing the generator's architecture


class OneStepGenerator(nn.Module):
    """Maps noise z ~ N(0, I) to a sample in one denoiser evaluation.

    Args:
        denoiser: D_θ, usually a copy of the teacher (or an already distilled generator).
        sigma_init: the fixed noise level σ_init the generator denoises from.
        t_init: instead of `sigma_init`, the denoiser's own time of σ_init: the integer timestep
            of a discrete VP schedule (the reference's 440 on linear-β CIFAR-10, σ = 2.50233;
            625 on Stable Diffusion, σ = 2.50170) or a flow time in (0, 1) (σ = t/(1 − t)).
            Give at most one of the two; with neither, σ_init = 2.5.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        sigma_init: float | None = None,
        t_init: int | float | None = None,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.sigma_init = resolve_sigma_init(denoiser, sigma_init, t_init)
        self.t_init = t_init

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.denoiser.sample_shape

    def forward(self, z: Tensor, cond: Any) -> Tensor:
        """Generate samples.

        Args:
            z: standard normal noise, (B, C, H, W).
            cond: condition batch for the denoiser (e.g. class labels (B,)).

        Returns:
            x_g, (B, C, H, W), float32.
        """
        return self.denoiser(
            self.denoiser.generator_input(z, self.sigma_init), self.sigma_init, cond
        )

    @torch.no_grad()
    def sample(self, cond: Any, batch_size: int, generator: torch.Generator) -> Tensor:
        """Draw z from `generator` (on its device) and generate `batch_size` samples."""
        z = torch.randn(
            (batch_size, *self.sample_shape), generator=generator, device=generator.device
        )
        return self(z, cond)


def resolve_sigma_init(
    denoiser: Denoiser, sigma_init: float | None, t_init: int | float | None
) -> float:
    """σ_init from exactly one of `sigma_init` and `t_init` (default 2.5); see `OneStepGenerator`."""
    check_one_start(sigma_init, t_init)
    if t_init is None:
        return check_number(
            "sigma_init", 2.5 if sigma_init is None else sigma_init, low=0, low_open=True
        )
    return denoiser.sigma_at_time(t_init)


# --- the generator in a training checkpoint ------------------------------------------------------


def checkpoint_entry(
    generator: OneStepGenerator, prefix: str, training: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The `GENERATOR_SPEC_KEY` entry of a checkpoint: architecture, σ_init, state-dict prefix.

    Args:
        generator: the generator to ship (the EMA when there is one).
        prefix: where its denoiser's tensors sit in the checkpoint's state_dict.
        training: optional description of the run (`training_record`), for the export's
            model card; older checkpoints have none.

    Returns:
        the entry, or None when the denoiser cannot describe itself (not exportable).
    """
    try:
        spec = generator.denoiser.spec()
    except NotImplementedError:
        return None
    entry = {
        "denoiser": spec,
        "sigma_init": generator.sigma_init,
        "t_init": generator.t_init,
        "prefix": prefix,
    }
    if training is not None:
        entry["training"] = training
    return entry


# Public attributes of condition samplers that say what is forgotten and what it maps to.
CONDITION_FIELDS = ("forget", "override", "concepts", "keywords", "negative_prompt")
EXAMPLE_PAIRS = 5  # forget -> override prompt pairs quoted in the record


def training_record(module: Any) -> dict[str, Any]:
    """What a run was: teacher source, forget -> override, settings and iterations (JSON data).

    Args:
        module: the `SFDModule` being checkpointed (read only).

    Returns:
        {"teacher", "conditions", "sigma_sampler", "hyperparameters", "optimizers",
        "global_step", "trained_weights"}, "adapters" for a shared-base run (`model.adapters`:
        kind, rank, alpha, targets, ...), and "completion" when a completion rule
        (`sfd.training.completion.UntilForgotten`) left its summary in `module.completion`.
    """
    teacher = module.teacher
    unet = getattr(teacher, "unet", None)
    source = getattr(teacher, "pipeline", None) or (
        unet.config.get("_name_or_path") if unet is not None else None
    )
    conditions = module.conditions
    described = {"class": type(conditions).__name__}
    described |= {
        name: _plain(getattr(conditions, name))
        for name in CONDITION_FIELDS
        if _plain(getattr(conditions, name, None)) is not None
    }
    forget, override = (getattr(conditions, f"{k}_prompts", None) for k in ("forget", "override"))
    if isinstance(forget, list) and isinstance(override, list):
        described["examples"] = [list(p) for p in zip(forget, override, strict=True)][
            :EXAMPLE_PAIRS
        ]
    sampler = module.sigma_sampler
    trainer = getattr(module, "_trainer", None)
    optimizers = [
        {"class": type(opt).__name__, **_plain(dict(opt.defaults))}
        for opt in (trainer.optimizers if trainer is not None else [])
    ]
    record = {
        "teacher": {"class": type(teacher).__name__, "source": source},
        "conditions": described,
        "sigma_sampler": {"class": type(sampler).__name__, **_plain(vars(sampler))},
        "hyperparameters": _plain(dict(module.hparams)),
        "optimizers": optimizers,  # fake score's, generator's (configure_optimizers order)
        "global_step": int(module.global_step),
    }
    shared = getattr(getattr(module, "fake_score", None), "shared", None)  # a shared-base run
    if shared is not None:
        record["adapters"] = _plain(shared.described())
    # Weights the two optimizers train: whole networks, or a shared base's adapters.
    record["trained_weights"] = {
        name: sum(p.numel() for p in getattr(module, name).parameters())
        for name in ("generator", "fake_score")
    }
    completion = getattr(module, "completion", None)  # the completion rule's, when it ran
    if completion is not None:
        record["completion"] = _plain(completion)
    return record


def _plain(value: Any) -> Any:
    """`value` as JSON data, or None where it is not plain data (tensors, objects)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return (
            None
            if any(i is None and v is not None for i, v in zip(items, value, strict=True))
            else items
        )
    if isinstance(value, dict):  # keys whose values are not plain data are left out
        return {str(k): p for k, v in value.items() if (p := _plain(v)) is not None or v is None}
    return None


def generator_from_checkpoint(
    checkpoint: str | Path | Mapping[str, Any], name: str | None = None
) -> OneStepGenerator:
    """Rebuild the generator to ship (the EMA when the run kept one) from an SFD checkpoint.

    Args:
        checkpoint: a checkpoint file (read with `load_checkpoint_safely`), or its already loaded
            contents.
        name: how messages name the checkpoint (default: "checkpoint 'FILE'", or "the
            checkpoint" for loaded contents).

    Returns:
        the generator, in eval mode on the CPU.
    """
    if name is None:
        name = (
            "the checkpoint"
            if isinstance(checkpoint, Mapping)
            else f"checkpoint {str(checkpoint)!r}"
        )
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_checkpoint_safely(checkpoint)
    if GENERATOR_SPEC_KEY not in checkpoint:
        raise SFDConfigError(
            f"{name} is not an SFD training checkpoint (it records no generator to export)"
        )
    entry = checkpoint[GENERATOR_SPEC_KEY]
    prefix = entry["prefix"]
    state = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    try:
        if entry["denoiser"].get("kind") == ADAPTED_KIND:  # a shared-base run: adapter only
            denoiser = denoiser_from_adapter_spec(entry["denoiser"], state)
        else:
            denoiser = denoiser_from_spec(entry["denoiser"])
            denoiser.load_state_dict(state, strict=True)
    except RuntimeError as error:  # the weights do not fit the recorded spec
        reason = str(error).strip().splitlines()
        detail = next((line.strip() for line in reason[1:] if line.strip()), reason[0])
        raise SFDConfigError(
            f"{name}: its generator weights do not fit the architecture it records ({detail})"
        ) from error
    t_init = entry.get("t_init")
    sigma_init = None if t_init is not None else entry["sigma_init"]
    return OneStepGenerator(denoiser, sigma_init, t_init).eval()

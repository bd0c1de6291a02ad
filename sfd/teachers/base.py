"""The σ-space denoiser contract every model in `sfd` is wrapped into (docs/method.md §1).

A denoiser maps a noisy sample x = x0 + σ·ε to an estimate of x0:  D(x, sigma, cond) -> x0_hat.
Losses, the generator and the trainer only ever see this interface; timesteps and alphas_cumprod
stay inside the adapters in this package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from sfd.errors import SFDConfigError

# The module's classifier-free guidance scales (`SFDModule` settings), which a teacher may refuse
# (override_guidance may be None: teacher_guidance's).
GUIDANCE_SCALES = (
    "teacher_guidance",
    "fake_train_guidance",
    "fake_eval_guidance",
    "override_guidance",
)


class PromptBatch(NamedTuple):
    """Prompt embeddings of one batched guidance call: conditional and null rows stacked (2B, L, D),
    with their pooled embeddings (2B, P) when the condition carries them (SDXL)."""

    prompt_embeds: Tensor
    pooled_embeds: Tensor | None = None


class Denoiser(nn.Module):
    """Base class of all σ-space denoisers D(x, sigma, cond) -> x0_hat.

    Subclasses set `sample_shape` (C, H, W) and `num_classes` (None for text models), implement
    `denoise`, and may implement `null_condition` (classifier-free guidance) and, with a `kind`
    tag, `spec` / `from_spec` (export; see `sfd.teachers.DENOISER_KINDS`).
    """

    sample_shape: tuple[int, int, int]
    num_classes: int | None = None
    kind: str | None = None  # the spec tag of exportable denoisers
    # How to load a pretrained teacher again ({"class_path", "init_args"}, `pretrained_source`):
    # an adapter run's checkpoint holds no base weights, its export reloads them from here.
    source: dict[str, Any] | None = None

    @property
    def sigma_table(self) -> Tensor | None:
        """The discrete noise levels σ_t of the training schedule (increasing in t), or None."""
        return None

    def denoise(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        raise NotImplementedError

    def sigma_at_time(self, t_init: Any) -> float:
        """σ_init of a one-step generator started at the model's own time t_init.

        Discrete-schedule (VP) models take an integer timestep, flow models a time in (0, 1);
        σ-space (EDM) models have no time of their own and take σ_init directly.
        """
        raise no_time_variable(type(self), t_init)

    @property
    def has_null_condition(self) -> bool:
        """Whether the model has a null condition (`null_condition`), which classifier-free
        guidance and condition dropout need."""
        return type(self).null_condition is not Denoiser.null_condition

    def check_guidance_scales(self, scales: dict[str, float]) -> None:
        """Refuse, in one line, classifier-free guidance scales this model cannot take (default:
        any scale other than 1 on a model without a null condition)."""
        check_scales_need_null(scales, type(self).__name__, self.has_null_condition)

    @classmethod
    def check_module_settings(cls, module: Mapping[str, Any]) -> None:
        """Refuse, in one line, module settings this family rules out whatever its weights (a flow
        model's t_init outside (0, 1)), reading no file: `sfd fit` and the demos call it on the
        parsed configuration, before any teacher exists (default: nothing to check).

        Args:
            module: the module's settings (t_init, the guidance scales, ...).
        """
        t_init = module.get("t_init")
        if t_init is not None and cls.sigma_at_time is Denoiser.sigma_at_time:
            raise no_time_variable(cls, t_init)  # a σ-space (EDM) model: refused before it exists

    @classmethod
    def prompt_tokenizer(cls, settings: Mapping[str, Any]) -> tuple[Any, int | None] | None:
        """The tokenizer that a soft prompt's learned tokens enter, read from the teacher's folder
        alone (no weights), with the padded length they must fit in (None: the tokenizer's
        model_max_length); None where there is no such tokenizer or no folder to read it from.
        `sfd fit` checks model.adversarial.tokens with it before the teacher loads.

        Args:
            settings: the teacher's init_args as configured.
        """
        return None

    @classmethod
    def check_before_loading(cls, settings: Mapping[str, Any], module: Mapping[str, Any]) -> None:
        """Refuse, in one line, what the teacher's settings and the files beside its weights
        (model_index.json, configs) already rule out, before a weight is read or the run is seeded
        (`sfd fit` calls it on the configuration; default: nothing to check).

        Args:
            settings: the teacher's init_args as configured.
            module: the module's settings (t_init, the guidance scales, ...).
        """

    @classmethod
    def check_negative_prompt(
        cls,
        settings: Mapping[str, Any],
        module: Mapping[str, Any],
        setting: str,
        roles: Sequence[str],
    ) -> None:
        """Refuse, in one line, a negative prompt that cannot act: one a guided network sees
        under classifier-free guidance scale 1, where `guided` returns the conditional branch and
        never evaluates the negative (`sfd fit` calls it before loading, as
        `check_before_loading`).

        Args:
            settings: the teacher's init_args as configured.
            module: the module's settings (the guidance scales).
            setting: the conditions' setting that gives the negative prompt, as words.
            roles: the guided networks (`GUIDED_ROLES` of the conditions) that see it.
        """
        for role in roles:
            scale = module.get(f"{role}_guidance")
            override = module.get("override_guidance") if role == "teacher" else None
            if override is not None and float(override) != 1.0:
                continue  # the teacher's override is guided in the unlearning term: it acts there
            if scale is not None and float(scale) == 1.0:
                raise SFDConfigError(
                    f"conditions {setting} gives {role} a negative prompt, but "
                    f"model.{role}_guidance is 1: at guidance 1 the negative prompt never acts; "
                    f"set --model.{role}_guidance above 1, or drop {role!r} from "
                    "--model.conditions.init_args.negative_for"
                )

    def generator_input(self, z: Tensor, sigma: float) -> Tensor:
        """The σ-space input of the one-step generator for noise z ~ N(0, I): σ·z (SiD's)."""
        return sigma * z

    def sampler_start(self, z: Tensor, sigma: Tensor | float) -> Tensor:
        """Where the model's own multi-step sampler starts at level σ for noise z ~ N(0, I):
        the VP start x_T = z, i.e. sqrt(1 + σ²)·z in σ-space (flow models: (1 + σ)·z)."""
        return z * (1 + torch.as_tensor(sigma, dtype=z.dtype, device=z.device) ** 2).sqrt()

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any) -> Tensor:
        """Estimate x0 from x at noise level sigma.

        Args:
            x: noisy samples, (B, C, H, W).
            sigma: noise level per sample, (B,), or a scalar broadcast to the batch.
            cond: the condition batch (class labels (B,) or a text condition).

        Returns:
            x0_hat in float32, (B, C, H, W).
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        return self.denoise(x, sigma.reshape(-1), cond).float()

    def class_embedding_table(self) -> Tensor | None:
        """The learned class embeddings (num_embeds, E) that a condition's `class_embeds` can stand
        in for, or None for denoisers whose labels do not pass through an embedding table.

        A class condition may then be an object with `labels` (B,), `class_embeds` (B, E) and
        `active` (B,): rows where `active` is True see their `class_embeds` vector in place of
        their label's embedding (the class-embedding attack, docs/method.md §9).
        """
        return None

    def network_dtype(self, network: nn.Module) -> torch.dtype:
        """The dtype `network` takes its inputs in, looked up once and kept until the next `.to()`.

        A diffusers model's `.dtype` walks every submodule (for casting hooks) on each call; the
        denoisers call their network several times per iteration. `_apply`, which every `.to()`,
        `.half()` or device move of this denoiser goes through, forgets the cached value.
        """
        dtype = self.__dict__.get("_network_dtype")
        if dtype is None:
            dtype = self.__dict__["_network_dtype"] = network.dtype
        return dtype

    def _apply(self, fn: Any, recurse: bool = True) -> Denoiser:
        self.__dict__.pop("_network_dtype", None)
        return super()._apply(fn, recurse)

    def null_condition(self, cond: Any) -> Any:
        """The unconditional (or negative-prompt) condition matching `cond`, for guidance."""
        raise SFDConfigError(
            f"{type(self).__name__} has no null condition, so classifier-free guidance and "
            "condition dropout are unavailable; use guidance scale 1.0 and cond_dropout 0.0"
        )

    def drop_condition(self, cond: Any, drop: Tensor) -> Any:
        """Condition dropout: the rows where `drop` (B,) is True become unconditional.

        Label tensors take the null label there; other condition batches (text) implement
        `dropped(drop)` themselves (a dropped prompt is the empty prompt, whatever the negative).
        """
        if not isinstance(cond, Tensor):
            return cond.dropped(drop)
        null = self.null_condition(cond)
        return torch.where(drop.reshape(-1, *([1] * (cond.ndim - 1))), null, cond)

    def guided(self, x: Tensor, sigma: Tensor | float, cond: Any, scale: float) -> Tensor:
        """Classifier-free guided x0_hat = D(x, ∅) + scale·(D(x, c) − D(x, ∅)); scale 1 is plain D."""
        x0_cond = self(x, sigma, cond)
        if scale == 1.0:
            return x0_cond
        x0_null = self(x, sigma, self.null_condition(cond))
        return x0_null + scale * (x0_cond - x0_null)

    def guided_in_one_batch(
        self, x: Tensor, sigma: Tensor | float, cond: Any, scale: float
    ) -> Tensor:
        """`guided` for text conditions, with the conditional and null halves in one batch (2B).

        One network call instead of two halves the kernel launches and, under autocast, the bf16
        weight copies that frozen networks keep for the backward pass. Text adapters whose
        network takes the prompt embeddings in one tensor (`prompt_embeds`) use it as `guided`.
        """
        if scale == 1.0:
            return self(x, sigma, cond)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        null = self.null_condition(cond)
        pooled = getattr(cond, "pooled_embeds", None)
        if pooled is not None:
            pooled = torch.cat([pooled, null.pooled_embeds])  # (2B, P)
        both = PromptBatch(torch.cat([cond.prompt_embeds, null.prompt_embeds]), pooled)
        x0_cond, x0_null = self(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
        return x0_null + scale * (x0_cond - x0_null)

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description that rebuilds this denoiser's architecture (no weights)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be exported")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Denoiser:
        """Rebuild the architecture described by `spec()` (random weights)."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from a spec")


def pretrained_source(cls: type, arguments: dict[str, Any]) -> dict[str, Any]:
    """A pretrained teacher's `source`: its class and the arguments that load it again.

    Args:
        cls: the loading class.
        arguments: its `__init__`'s `locals()` taken first thing (`self` is left out).
    """
    init_args = {k: v for k, v in arguments.items() if k not in ("self", "__class__")}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def check_scales_need_null(scales: Mapping[str, float], family: str, has_null: bool) -> None:
    """Refuse classifier-free guidance scales != 1 on a model without a null condition (a class
    model trained without a null label), in one line: a guided call evaluates D(x, ∅).

    Args:
        scales: the guidance scales by setting name (e.g. {"override_guidance": 2.0}).
        family: the model's class name, as the message names it.
        has_null: whether the model has a null condition.
    """
    given = {name: scale for name, scale in scales.items() if scale != 1.0}
    if given and not has_null:
        name, scale = next(iter(given.items()))
        raise SFDConfigError(
            f"{name}={scale} is classifier-free guidance, which needs a null condition that "
            f"{family} does not have (no null class label); keep every guidance scale at 1, or "
            "use a teacher trained with a null class (null_class in its sfd.json or "
            "--model.teacher.init_args.null_class)"
        )


def no_time_variable(family: type, t_init: Any) -> SFDConfigError:
    """The refusal of a t_init for a model with no time variable of its own (σ-space, EDM)."""
    return SFDConfigError(
        f"t_init={t_init!r} needs a teacher with its own time variable (a discrete VP "
        f"schedule or a flow time); {family.__name__} has none (give sigma_init instead)"
    )

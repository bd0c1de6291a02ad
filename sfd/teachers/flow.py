"""Rectified-flow (flow-matching) models in σ-space, and the base class of every flow adapter.

Rectified flow interpolates x_t = (1 − t)·x0 + t·ε for t ∈ [0, 1] and trains a velocity
v(x_t, t, c) ≈ ε − x0. Dividing by (1 − t) gives σ-space (docs/method.md §1):

    x_σ = x_t / (1 − t) = x0 + σ·ε,   σ = t / (1 − t),   t = σ / (1 + σ),   x_t = x_σ / (1 + σ),

so a velocity model is the denoiser D(x_σ, σ, c) = x_t − t·v(x_t, t, c) (the maps between t and σ:
`sfd.teachers.flow_time`). Losses, the generator and the trainer see only D; t, the velocity and the
network's call convention stay in this module and in the family adapters (`sfd.teachers.sd3`, `sfd.teachers.flux`), which implement `predict`.

A scheduler's shift (static, or resolution-dependent as Flux's) changes which t a *sampler* visits,
never the map from (x_t, t) to v, so it does not enter the denoiser. The one-step generator starts
from pure noise at t_init near 1 (x_t = z, as the model's own sampler does), so its output is one
Euler step from t_init to 0: x0 = z − t_init·v(z, t_init) (`FlowDenoiser.generator_input`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor, nn

from sfd.errors import SFDConfigError
from sfd.hub import check_hub_source
from sfd.teachers.base import Denoiser
from sfd.teachers.flow_time import check_flow_time, flow_sigma, flow_time, x0_from_velocity
from sfd.teachers.text_encoder import (
    learned_token_rows,
    load_text_encoder,
    load_tokenizer,
    model_index,
    tokenize,
)
from sfd.teachers.unet import SFD_CONFIG_NAME, read_sfd_config


class FlowDenoiser(Denoiser):
    """Base of the flow-matching adapters: σ ↔ t, the velocity → x0 conversion, the noise input.

    Subclasses call the network in `predict` (its own latent layout, prompt inputs and timestep
    scale); everything between σ-space and flow time happens here, once. A flow model has no
    discrete σ table: its loss noise levels come from a continuous sampler
    (`sfd.core.sigma.LogitNormalTime`, `UniformTime`) and its one-step generator from a flow time
    t_init ∈ (0, 1).
    """

    def predict(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        """The network's velocity for flow input x_t (B, C, H, W) at flow times t (B,) in [0, 1]."""
        raise NotImplementedError

    def denoise(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        t = flow_time(sigma.float())  # (B,)
        t_b = t.reshape(-1, 1, 1, 1)
        x_t = x.float() / (1 + sigma.float().reshape(-1, 1, 1, 1))  # (B, C, H, W)
        velocity = self.predict(x_t, t, cond).float()  # (B, C, H, W)
        return x0_from_velocity(velocity, x_t, t_b)

    def sigma_at_time(self, t_init: float) -> float:
        """σ_init of a generator started at flow time t_init ∈ (0, 1)."""
        return float(flow_sigma(check_flow_time("t_init", t_init)))

    def generator_input(self, z: Tensor, sigma: float) -> Tensor:
        """x_σ = (1 + σ)·z, i.e. x_t = z: pure noise at t, as a flow sampler starts."""
        return (1 + sigma) * z

    sampler_start = generator_input  # the Euler sampler starts from x_t = z as well

    @property
    def sampler_shift(self) -> float:
        """The static shift of the model's own multi-step sampler (1: none)."""
        return 1.0


# --- prompts: sequence and pooled embeddings in one tensor ---------------------------------------


def pack_pooled(prompt_embeds: Tensor, pooled: Tensor) -> Tensor:
    """Sequence embeddings (N, L, D) and pooled embeddings (N, P), P <= D, as one (N, 1 + L, D).

    Row 0 holds the pooled vector (zero-padded to D); rows 1.. the sequence. One tensor keeps a
    family with pooled projections inside `TextCondition` unchanged: batching, dropout to the
    empty prompt, negatives and appended soft-prompt tokens act on rows as for any encoder.
    """
    n, _, dim = prompt_embeds.shape
    if pooled.shape[0] != n or pooled.shape[1] > dim:
        raise SFDConfigError(
            f"pooled embeddings {tuple(pooled.shape)} do not fit sequence embeddings "
            f"{tuple(prompt_embeds.shape)} (need (N, P) with P <= {dim})"
        )
    row = pooled.new_zeros(n, 1, dim)
    row[:, 0, : pooled.shape[1]] = pooled
    return torch.cat([row, prompt_embeds.to(pooled.dtype)], dim=1)


def unpack_pooled(embeds: Tensor, pooled_dim: int) -> tuple[Tensor, Tensor]:
    """The inverse of `pack_pooled`: (sequence (N, L, D), pooled (N, pooled_dim))."""
    return embeds[:, 1:], embeds[:, 0, :pooled_dim]


# --- loading a flow pipeline folder --------------------------------------------------------------

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def check_pipeline_class(
    path: str, index: dict[str, Any], allowed: tuple[str, ...] | None, teacher: str
) -> None:
    """Refuse, in one line, a pipeline folder whose model_index names another family.

    Args:
        path: the folder or hub id.
        index: its model_index.json ({} when it has none: nothing to check).
        allowed: the pipeline classes `teacher` loads; None: any but the flow families'.
        teacher: the teacher's name, for the message.
    """
    name = index.get("_class_name")
    if isinstance(name, list):
        name = name[-1]
    flow_classes = {family.pipeline_class.__name__ for family in flow_families()}
    refused = name in flow_classes if allowed is None else name not in allowed
    if index and refused:
        allowed = allowed or ("StableDiffusionPipeline",)
        raise SFDConfigError(
            f"{path!r} holds a {name!r} pipeline; {teacher} loads {' or '.join(allowed)} folders "
            "(Stable Diffusion 1.x/2.x: sfd.teachers.StableDiffusionTeacher; SDXL: "
            "sfd.teachers.StableDiffusionXLTeacher; SD3 / SD3.5: "
            "sfd.teachers.SD3Teacher; Flux.1: sfd.teachers.FluxTeacher)"
        )


def check_flow_scheduler(path: str, config: dict[str, Any]) -> dict[str, Any]:
    """Return the scheduler config of a flow folder; refuse a scheduler that is not flow matching."""
    name = config.get("_class_name")
    if name not in FLOW_SCHEDULERS:
        raise SFDConfigError(
            f"{path!r} has a {name!r} scheduler; a flow-matching teacher needs one of "
            f"{FLOW_SCHEDULERS} (a DDPM-style folder belongs to StableDiffusionTeacher)"
        )
    return config


FLOW_SPEC_PARTS = ("kind", "transformer", "scheduler", "pipeline", "revision")


class FlowTransformerDenoiser(FlowDenoiser):
    """What every diffusers flow transformer family shares: the network, its folder, prompts, spec.

    A family (`sfd.teachers.sd3`, `sfd.teachers.flux`; a new one is one file like them plus the
    registrations docs/families/flow.md lists: `DENOISER_KINDS`, an export class in
    `FLOW_PIPELINES`) sets `kind`, `transformer_class`, `pipeline_class` (the stock diffusers
    pipeline of its folders), `sequence_encoder`, and implements `predict` (the network's call
    convention) and `encode_with_pipeline` (its prompt encoders, run by the stock pipeline's own
    `encode_prompt`).

    Args:
        transformer: the diffusers transformer.
        scheduler_config: the folder's `FlowMatchEulerDiscreteScheduler` config (its shift is the
            sampler's business, kept for exports and the teacher's own multi-step sampling).
        pipeline: folder or hub id of the full pipeline (VAE, text encoders), to encode prompts
            and to export.
        revision: hub revision of `pipeline`.
        max_sequence_length: T5 tokens per prompt (None: the stock pipeline's default, 256 for
            SD3, 512 for Flux); exports record it, since the stock call must use the same.
    """

    transformer_class: type
    pipeline_class: type
    default_sequence_length: int = 256
    # (tokenizer, text encoder) attributes of the pipeline's sequence encoder (T5): its last
    # hidden states are the packed tensor's last `max_sequence_length` rows.
    sequence_encoder: tuple[str, str]

    def __init__(
        self,
        transformer: nn.Module,
        scheduler_config: dict[str, Any],
        pipeline: str | None = None,
        revision: str | None = None,
        max_sequence_length: int | None = None,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.scheduler_config = dict(scheduler_config)
        self.pipeline = pipeline
        self.revision = revision
        length = (
            self.default_sequence_length if max_sequence_length is None else max_sequence_length
        )
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 512:
            raise SFDConfigError(
                f"max_sequence_length={length!r} must be an integer in 1..512 (T5 tokens)"
            )
        self.max_sequence_length = length

    @property
    def _dtype(self) -> torch.dtype:
        """The transformer's input dtype, looked up once until the next `.to()` (`network_dtype`)."""
        return self.network_dtype(self.transformer)

    @property
    def sampler_shift(self) -> float:
        """The folder scheduler's static shift (SD3: 3.0); resolution-dependent shifting (Flux's
        `use_dynamic_shifting`) has no single value and is refused."""
        if self.scheduler_config.get("use_dynamic_shifting"):
            raise SFDConfigError(
                f"the {self.kind} scheduler shifts with the resolution (use_dynamic_shifting); "
                "sfd's multi-step flow sampler takes a static shift only"
            )
        return float(self.scheduler_config.get("shift", 1.0))

    def null_condition(self, cond: Any) -> Any:
        return cond.null()

    def split_prompt(self, cond: Any) -> tuple[Tensor, Tensor]:
        """(sequence embeddings (B, L, D), pooled embeddings (B, P)) of a text condition."""
        embeds = getattr(cond, "prompt_embeds", None)
        if not isinstance(embeds, Tensor):
            raise TypeError(
                f"a {type(self).__name__} needs a text condition (prompt_embeds), got {type(cond)}"
            )
        return unpack_pooled(embeds, self.transformer.config.pooled_projection_dim)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 32) -> Tensor:
        """Encode prompts once with the folder's encoders (loaded here, released after).

        Returns:
            packed embeddings (`pack_pooled`), (N, 1 + L, D), float32 on the CPU.
        """
        if self.pipeline is None:
            raise SFDConfigError(f"{type(self).__name__} records no pipeline to encode prompts")
        try:
            encoders = self.pipeline_class.from_pretrained(
                self.pipeline, revision=self.revision, transformer=None, vae=None
            )
        except (OSError, ValueError) as error:
            raise flow_load_error(self.pipeline, "text encoders", error) from error
        rows = [
            self.encode_with_pipeline(encoders, prompts[i : i + batch_size]).float().cpu()
            for i in range(0, len(prompts), batch_size)
        ]
        return torch.cat(rows)

    def encode_with_pipeline(self, pipeline: Any, prompts: list[str]) -> Tensor:
        """Packed embeddings (N, 1 + L, D) of prompts by a stock pipeline's `encode_prompt`."""
        raise NotImplementedError

    # --- the sequence encoder, where a soft-prompt attack appends its tokens ---------------------
    # The stock pipelines place its hidden states last along the token axis of `prompt_embeds`
    # (SD3: [CLIP rows ; T5 rows]; Flux: the T5 rows only), so they are the last
    # `max_sequence_length` rows of any prompt embeddings the family returns.

    def load_sequence_encoder(self) -> tuple[Any, nn.Module]:
        """The tokenizer and frozen text encoder of the pipeline's sequence encoder (SD3's T5
        slot, Flux's T5), loaded from `pipeline` alone (no other encoder, no transformer)."""
        suffix = self.sequence_encoder[0].removeprefix("tokenizer")
        return load_text_encoder(self.pipeline, self.revision, suffix)

    def tokenize_sequence(self, tokenizer: Any, prompts: list[str]) -> Any:
        """Token ids and attention mask of prompts as the stock pipeline pads them for the
        sequence encoder: to `max_sequence_length`, truncated."""
        return tokenize(tokenizer, prompts, self.max_sequence_length)

    def sequence_states(self, text_encoder: nn.Module, **inputs: Tensor) -> Tensor:
        """The sequence encoder's hidden states as the stock pipeline computes them: its last
        hidden states, without an attention mask, (B, L, D)."""
        return text_encoder(**inputs)[0].float()

    def soft_sequence_states(
        self, text_encoder: nn.Module, input_ids: Tensor, used: Tensor, soft: Tensor
    ) -> Tensor:
        """`sequence_states` of prompts with learned token embeddings inserted before their end
        token (`sfd.teachers.text_encoder.learned_token_rows`), (B, L, D), differentiable."""
        with learned_token_rows(text_encoder, input_ids, used, soft) as (ids, _):
            return self.sequence_states(text_encoder, input_ids=ids)

    def sequence_rows(self, prompt_embeds: Tensor) -> Tensor:
        """The sequence encoder's rows of prompt embeddings: the last `max_sequence_length`."""
        return prompt_embeds[:, -self.max_sequence_length :]

    def with_sequence_states(self, prompt_embeds: Tensor, states: Tensor) -> Tensor:
        """Prompt embeddings (B, R, D) with their sequence-encoder rows replaced by `states`
        (B, max_sequence_length, D); every other row (CLIP rows, a packed pooled row) kept."""
        kept = prompt_embeds[:, : -self.max_sequence_length]
        return torch.cat([kept, states.to(prompt_embeds.dtype)], dim=1)

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "transformer": dict(self.transformer.config),
            "scheduler": self.scheduler_config,
            "pipeline": self.pipeline,
            "revision": self.revision,
            "max_sequence_length": self.max_sequence_length,
        }

    @classmethod
    def check_before_loading(cls, settings: Mapping[str, Any], module: Mapping[str, Any]) -> None:
        """The folder's pipeline class and scheduler (`check_flow_folder`; only for a teacher read
        from a folder, not one built from modules) and the generator's flow time t_init, before
        the transformer loads; for a folder that records the sequence length its teacher was
        trained with (sfd.json's max_length, as sfd's text teachers write it), the configured
        max_sequence_length against it."""
        path = settings.get("pretrained_model_name_or_path")
        if path is not None:
            check_flow_folder(cls, str(path), settings.get("revision"), cls.__name__)
            cls.check_trained_length(
                settings.get("max_sequence_length"),
                trained_sequence_length(str(path)),
                f"the teacher in {str(path)!r} (its {SFD_CONFIG_NAME})",
            )
        cls.check_module_settings(module)

    @classmethod
    def check_trained_length(cls, length: int | None, trained: int | None, teacher: str) -> None:
        """Refuse a max_sequence_length other than the one the teacher was trained with: the
        sequence encoder's rows enter without an attention mask, so the padded length changes
        every prompt's embedding.

        Args:
            length: the configured max_sequence_length (None: the family's default).
            trained: the teacher's own (None: not known, nothing to check).
            teacher: how the message names the teacher and where its length is recorded.
        """
        length = cls.default_sequence_length if length is None else length
        if trained is not None and length != trained:
            raise SFDConfigError(
                f"model.teacher.init_args.max_sequence_length={length} differs from the "
                f"{trained} tokens per prompt of {teacher}: without an attention mask the padded "
                "length changes every prompt's embedding; set "
                f"--model.teacher.init_args.max_sequence_length {trained}"
            )

    @classmethod
    def prompt_tokenizer(cls, settings: Mapping[str, Any]) -> tuple[Any, int | None] | None:
        """The sequence encoder's tokenizer (SD3's T5 slot, Flux's T5), padding to the configured
        max_sequence_length (default the family's)."""
        path = settings.get("pretrained_model_name_or_path")
        if path is None:
            return None
        tokenizer = load_tokenizer(str(path), settings.get("revision"), cls.sequence_encoder[0])
        length = settings.get("max_sequence_length")
        return tokenizer, cls.default_sequence_length if length is None else length

    @classmethod
    def check_module_settings(cls, module: Mapping[str, Any]) -> None:
        """The generator's flow time t_init, strictly inside (0, 1)."""
        if module.get("t_init") is not None:
            check_flow_time("t_init", module["t_init"])

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FlowTransformerDenoiser:
        return cls._with(cls.transformer_class.from_config(spec["transformer"]), spec)

    def with_transformer(self, transformer: nn.Module) -> FlowTransformerDenoiser:
        """The same denoiser (family, settings, source) over another transformer, e.g. the teacher's
        with a LoRA loaded."""
        family = next(c for c in type(self).__mro__ if "kind" in vars(c))  # not its …Teacher loader
        return family._with(transformer, self.spec())

    @classmethod
    def _with(cls, transformer: nn.Module, spec: dict[str, Any]) -> FlowTransformerDenoiser:
        settings = {k: v for k, v in spec.items() if k not in FLOW_SPEC_PARTS}
        return cls(transformer, spec["scheduler"], spec["pipeline"], spec["revision"], **settings)


def flow_families() -> list[type[FlowTransformerDenoiser]]:
    """Every flow family defined so far: the subclasses of `FlowTransformerDenoiser` that set their
    own `kind` (a family file registers itself by being imported; `sfd.teachers` imports them)."""
    families, pending = [], [FlowTransformerDenoiser]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if "kind" in vars(cls):
            families.append(cls)
    return families


def flow_load_error(path: str, what: str, error: Exception) -> SFDConfigError:
    """The one-line error of a flow pipeline folder or hub id that does not load."""
    return SFDConfigError(
        f"cannot load the {what} from {path!r}: expected a diffusers SD3 / Flux folder "
        f"(transformer/, scheduler/, vae/, text encoders) or a reachable hub id "
        f"({error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    )


def check_flow_folder(
    family: type[FlowTransformerDenoiser], path: str, revision: str | None, teacher: str
) -> dict[str, Any]:
    """Refuse a flow pipeline folder of another family or scheduler, reading no weights.

    Args:
        family: the denoiser class whose `pipeline_class` the folder must hold.
        path: folder or hub id.
        revision: hub revision.
        teacher: the teacher's name, for messages.

    Returns:
        the scheduler config.
    """
    check_hub_source(path, f"{family.pipeline_class.__name__} pipeline")
    check_pipeline_class(
        path, model_index(path, revision), (family.pipeline_class.__name__,), teacher
    )
    try:
        config = dict(
            FlowMatchEulerDiscreteScheduler.load_config(
                path, subfolder="scheduler", revision=revision
            )
        )
    except (OSError, ValueError) as error:
        raise flow_load_error(path, "scheduler config", error) from error
    return check_flow_scheduler(path, config)


def load_flow_parts(
    family: type[FlowTransformerDenoiser], path: str, revision: str | None, teacher: str
) -> tuple[nn.Module, dict[str, Any]]:
    """The transformer and scheduler config of a flow pipeline folder, each checked for its family.

    Args:
        family: the denoiser class whose `pipeline_class` / `transformer_class` the folder must hold.
        path: folder or hub id.
        revision: hub revision.
        teacher: the teacher's name, for messages.

    Returns:
        (transformer in eval mode, scheduler config).
    """
    config = check_flow_folder(family, path, revision, teacher)
    try:
        transformer = family.transformer_class.from_pretrained(
            path, subfolder="transformer", revision=revision
        )
    except (OSError, ValueError) as error:
        raise flow_load_error(path, family.transformer_class.__name__, error) from error
    return transformer.eval(), config


def trained_sequence_length(folder: str) -> int | None:
    """The sequence length (tokens per prompt) a flow teacher folder records as trained with:
    its sfd.json's max_length, which sfd's own flow text teachers write; None where it records
    none (a stock pipeline folder, a hub id)."""
    value = read_sfd_config(folder).get("max_length")
    return value if isinstance(value, int) and not isinstance(value, bool) else None

"""Text encoders of diffusers text-to-image folders: loading, tokenising, encoding prompts.

The tokenizer and text encoder are the classes the folder's `model_index.json` names (CLIP for
Stable Diffusion 1.x / 2.x, or any transformers encoder such as a BERT sentence encoder), or
transformers' AutoTokenizer / AutoModel where there is no index. Padding follows the encoder:
CLIP keeps Stable Diffusion's convention (prompts padded to 77 tokens, every position attended by
the UNet); any other encoder gets its attention mask, and its padded positions come out as zero
vectors, which `cross_attention_mask` turns into the UNet's `encoder_attention_mask`. A condition
therefore needs no extra field: the mask is read off the embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch
from torch import Tensor, nn

from sfd.errors import SFDConfigError
from sfd.hub import check_hub_source

# Text encoders that keep Stable Diffusion's padding convention (no attention mask anywhere).
CLIP_MODEL_TYPES = ("clip_text_model",)


def pipeline_load_error(path: str, what: str, error: Exception) -> SFDConfigError:
    """The one-line error of a pipeline folder or hub id that does not load."""
    return SFDConfigError(
        f"cannot load the {what} from {path!r}: expected a diffusers Stable Diffusion folder "
        f"(unet/, scheduler/, text_encoder/, tokenizer/, vae/) or a reachable hub id "
        f"({error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    )


def cross_attention_mask(prompt_embeds: Tensor) -> Tensor | None:
    """The UNet's `encoder_attention_mask`: 1 for text positions, 0 for padding (zero vectors).

    Args:
        prompt_embeds: text-encoder hidden states, (B, L, D).

    Returns:
        (B, L) mask, or None when no row has padding (CLIP's convention: every position is
        attended, and the UNet call stays exactly Stable Diffusion's).
    """
    keep = prompt_embeds.detach().abs().amax(dim=-1) > 0  # (B, L)
    return None if bool(keep.all()) else keep.to(prompt_embeds.dtype)


def masks_padding(text_encoder: nn.Module) -> bool:
    """Whether the encoder's convention masks padding (every encoder but CLIP's)."""
    return getattr(text_encoder.config, "model_type", None) not in CLIP_MODEL_TYPES


def model_index(path: str, revision: str | None = None) -> dict[str, Any]:
    """The pipeline's `model_index.json` (component -> [library, class]); {} if it has none."""
    folder = Path(path)
    if folder.is_dir():
        index = folder / "model_index.json"
        return json.loads(index.read_text()) if index.is_file() else {}
    try:
        return dict(diffusers.DiffusionPipeline.load_config(path, revision=revision))
    except (OSError, ValueError):  # not reachable now: the auto classes below say what is wrong
        return {}


def _component_class(index: dict[str, Any], name: str, auto: type) -> type:
    """The transformers class that `model_index.json` names for a component (default `auto`)."""
    import transformers

    entry = index.get(name)
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
        return auto
    library, class_name = entry
    found = getattr(transformers, class_name, None) if library == "transformers" else None
    if not isinstance(found, type):
        raise SFDConfigError(
            f"model_index.json names {name} = [{library!r}, {class_name!r}]; allowed: a "
            "transformers tokenizer or model class"
        )
    return found


def load_text_encoder(
    path: str | None, revision: str | None = None, suffix: str = ""
) -> tuple[Any, nn.Module]:
    """The tokenizer and text encoder of a pipeline folder or hub id (eval mode, no grad).

    The classes are the ones `model_index.json` names (e.g. CLIPTokenizer / CLIPTextModel, or
    BertTokenizer / BertModel); without an index, transformers' AutoTokenizer / AutoModel.
    `suffix` picks a second pair: "_2" loads `tokenizer_2/` and `text_encoder_2/` (SDXL).
    """
    from transformers import AutoModel, AutoTokenizer

    if path is None:
        raise SFDConfigError("this denoiser has no pipeline path, so it cannot encode prompts")
    check_hub_source(path, "text encoder pipeline")
    index = model_index(path, revision)
    tokenizer_name, encoder_name = "tokenizer" + suffix, "text_encoder" + suffix
    tokenizer_class = _component_class(index, tokenizer_name, AutoTokenizer)
    encoder_class = _component_class(index, encoder_name, AutoModel)
    try:
        tokenizer = tokenizer_class.from_pretrained(
            path, subfolder=tokenizer_name, revision=revision
        )
        text_encoder = encoder_class.from_pretrained(
            path, subfolder=encoder_name, revision=revision
        )
    except (OSError, ValueError) as error:
        raise pipeline_load_error(path, "tokenizer/text encoder", error) from error
    return tokenizer, text_encoder.requires_grad_(False).eval()


def tokenize(tokenizer: Any, prompts: list[str], max_length: int | None = None) -> Any:
    """Token ids and attention mask, padded and truncated to `max_length` (default the
    tokenizer's `model_max_length`; a flow pipeline's sequence encoder pads to its
    `max_sequence_length`, as the stock pipelines do)."""
    length = tokenizer.model_max_length if max_length is None else max_length
    if not 0 < length <= 4096:
        raise SFDConfigError(
            f"the tokenizer's model_max_length={length} is not a usable sequence length; "
            "save the tokenizer with model_max_length set (e.g. 77 for CLIP)"
        )
    return tokenizer(
        list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    )


def hidden_states(
    text_encoder: nn.Module, input_ids: Tensor | None, attention_mask: Tensor, **inputs: Tensor
) -> Tensor:
    """The encoder's last hidden states under its padding convention (see the module docstring).

    Args:
        text_encoder: the text encoder.
        input_ids: token ids, (B, L), or None when `inputs_embeds` (B, L, D_in) is given.
        attention_mask: 1 for tokens, 0 for padding, (B, L).
        inputs: more encoder inputs (e.g. `inputs_embeds` for learned token embeddings).

    Returns:
        float32 hidden states, (B, L, D); padded positions are zero for non-CLIP encoders.
    """
    if not masks_padding(text_encoder):
        return text_encoder(input_ids, **inputs)[0].float()
    states = text_encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs)[0]
    return states.float() * attention_mask.unsqueeze(-1).to(torch.float32)


@torch.no_grad()
def encode_with(
    tokenizer: Any, text_encoder: nn.Module, prompts: list[str], batch_size: int = 32
) -> Tensor:
    """Hidden states of the text encoder's last layer for padded, truncated prompts.

    Args:
        tokenizer: the pipeline's tokenizer (pads to its `model_max_length`).
        text_encoder: the pipeline's text encoder (`CLIPTextModel`, `BertModel`, ...).
        prompts: N prompt strings.
        batch_size: prompts per call.

    Returns:
        embeddings, (N, L, D), float32 on the text encoder's device.
    """
    device = next(text_encoder.parameters()).device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenize(tokenizer, prompts[start : start + batch_size])
        chunks.append(
            hidden_states(
                text_encoder, tokens.input_ids.to(device), tokens.attention_mask.to(device)
            )
        )  # (b, L, D)
    return torch.cat(chunks)


def check_inputs_embeds(text_encoder: nn.Module, what: str) -> None:
    """Raise `SFDConfigError` unless the encoder takes learned token embeddings (`inputs_embeds`).

    Args:
        text_encoder: the text encoder.
        what: what needs it, for the message (e.g. "the soft-prompt attack").
    """
    import inspect

    if "inputs_embeds" not in inspect.signature(text_encoder.forward).parameters:
        raise SFDConfigError(
            f"{what} needs a text encoder that takes inputs_embeds; "
            f"{type(text_encoder).__name__} does not"
        )


def soft_token_inputs(
    text_encoder: nn.Module, input_ids: Tensor, used: Tensor, soft: Tensor
) -> tuple[Tensor, Tensor]:
    """Input embeddings of prompts with learned token embeddings inserted before their end token.

    Row b reads: its first used[b] − 1 tokens, the n learned vectors soft[b], its end token and
    padding, truncated to the prompt length L (callers check that used + n ≤ L).

    Args:
        text_encoder: a frozen encoder that takes `inputs_embeds`.
        input_ids: token ids of the prompts, (B, L).
        used: non-padding tokens of each prompt (start and end tokens included), (B,).
        soft: the learned vectors in the encoder's input-embedding space, (B, n, D_in).

    Returns:
        (inputs_embeds (B, L, D_in), differentiable in `soft`; attention mask (B, L), 1 for the
        used tokens and the learned ones).
    """
    batch, length = input_ids.shape
    n = soft.shape[1]
    words = text_encoder.get_input_embeddings()(input_ids)  # (B, L, D_in)
    position = torch.arange(length, device=input_ids.device).expand(batch, length)  # (B, L)
    start = (used - 1).reshape(-1, 1)  # where the learned vectors go: before the end token
    # Index into [words ; soft] (B, L + n): words before `start`, then soft, then the rest shifted.
    source = torch.where(
        position < start,
        position,
        torch.where(position < start + n, length + position - start, position - n),
    )
    sequence = torch.cat([words, soft.to(words.dtype)], dim=1)
    sequence = sequence.gather(1, source.unsqueeze(-1).expand(-1, -1, sequence.shape[-1]))
    mask = (position < (used.reshape(-1, 1) + n)).to(torch.long)  # (B, L)
    return sequence, mask


def insert_soft_tokens(
    text_encoder: nn.Module, input_ids: Tensor, used: Tensor, soft: Tensor
) -> Tensor:
    """Hidden states of prompts with learned token embeddings inserted before their end token
    (`soft_token_inputs`), under the encoder's padding convention (`hidden_states`).

    Returns:
        float32 hidden states, (B, L, D), differentiable in `soft`.
    """
    sequence, mask = soft_token_inputs(text_encoder, input_ids, used, soft)
    return hidden_states(text_encoder, None, mask, inputs_embeds=sequence)

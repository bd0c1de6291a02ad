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
from collections.abc import Iterator
from contextlib import contextmanager
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


def load_tokenizer(path: str, revision: str | None = None, subfolder: str = "tokenizer") -> Any:
    """A pipeline folder's (or hub id's) tokenizer alone, of the class `model_index.json` names
    (default AutoTokenizer): what a check of the prompts' token room reads before any weight."""
    from transformers import AutoTokenizer

    check_hub_source(path, "text encoder pipeline")
    tokenizer_class = _component_class(model_index(path, revision), subfolder, AutoTokenizer)
    try:
        return tokenizer_class.from_pretrained(path, subfolder=subfolder, revision=revision)
    except (OSError, ValueError) as error:
        raise pipeline_load_error(path, "tokenizer", error) from error


def load_text_encoder(
    path: str | None, revision: str | None = None, suffix: str = ""
) -> tuple[Any, nn.Module]:
    """The tokenizer and text encoder of a pipeline folder or hub id (eval mode, no grad).

    The classes are the ones `model_index.json` names (e.g. CLIPTokenizer / CLIPTextModel, or
    BertTokenizer / BertModel); without an index, transformers' AutoTokenizer / AutoModel.
    `suffix` picks a second pair: "_2" loads `tokenizer_2/` and `text_encoder_2/` (SDXL).
    """
    from transformers import AutoModel

    if path is None:
        raise SFDConfigError("this denoiser has no pipeline path, so it cannot encode prompts")
    check_hub_source(path, "text encoder pipeline")
    index = model_index(path, revision)
    tokenizer_name, encoder_name = "tokenizer" + suffix, "text_encoder" + suffix
    tokenizer = load_tokenizer(path, revision, tokenizer_name)
    encoder_class = _component_class(index, encoder_name, AutoModel)
    try:
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


def tokenize_with_room(
    tokenizer: Any, prompt: str, num_tokens: int, max_length: int | None = None, what: str = ""
) -> tuple[Tensor, Tensor]:
    """A prompt's token ids and attention mask, (L,) each, refused in one line when
    `num_tokens` more tokens (an attack's, inserted before the end token) do not fit.

    Args:
        tokenizer: the model's tokenizer.
        prompt: the prompt.
        num_tokens: the tokens to insert.
        max_length: the padded length (None: the tokenizer's `model_max_length`; a flow
            pipeline's sequence encoder: its `max_sequence_length`).
        what: the setting that asks for the tokens, to start the message (e.g. "--attack-tokens"
            or "model.adversarial.tokens").
    """
    tokens = tokenize(tokenizer, [prompt], max_length)
    ids, mask = tokens.input_ids[0], tokens.attention_mask[0]  # (L,)
    length, used = len(ids), int(mask.sum())
    if used + num_tokens > length:
        limit = "model_max_length" if max_length is None else "max_sequence_length"
        raise SFDConfigError(
            f"{_asking(what, num_tokens)}prompt {prompt!r} has {used} tokens; {num_tokens} more exceed the "
            f"tokenizer's {limit}={length} (room for {max(length - used, 0)})"
        )
    return ids, mask


def _asking(what: str, num_tokens: int) -> str:
    """The start of a room refusal: "--attack-tokens 40: " (an option), "model.x=40: " (a key)."""
    if not what:
        return ""
    return f"{what} {num_tokens}: " if what.startswith("-") else f"{what}={num_tokens}: "


def check_token_room(
    tokenizer: Any,
    prompts: list[str],
    num_tokens: int,
    max_length: int | None = None,
    what: str = "",
    shortest: bool = False,
) -> None:
    """Refuse, in one line (`tokenize_with_room`'s), `num_tokens` inserted tokens that do not fit
    after the prompts: after every one (an attack of each prompt), or with `shortest` after the
    shortest one (adversarial SFD attacks the prompts with room, so one suffices). The check
    needs the tokenizer alone: the demos, `sfd fit` and `sfd eval-text` run it before any weight
    loads.

    Args:
        tokenizer: the model's tokenizer (`load_tokenizer`).
        prompts: the prompts the tokens follow.
        num_tokens: the tokens to insert.
        max_length: the padded length (None: the tokenizer's `model_max_length`; a flow
            pipeline's sequence encoder: its `max_sequence_length`).
        what: the setting that asks for the tokens (e.g. "--attack-tokens").
    """
    if shortest and prompts:
        used = tokenize(tokenizer, prompts, max_length).attention_mask.sum(1)  # (P,)
        try:
            tokenize_with_room(tokenizer, prompts[int(used.argmin())], num_tokens, max_length)
        except SFDConfigError as error:
            raise SFDConfigError(f"{_asking(what, num_tokens)}even the shortest {error}") from error
        return
    for prompt in prompts:
        tokenize_with_room(tokenizer, prompt, num_tokens, max_length, what)


def hidden_states(text_encoder: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The encoder's last hidden states under its padding convention (see the module docstring).

    Args:
        text_encoder: the text encoder.
        input_ids: token ids, (B, L).
        attention_mask: 1 for tokens, 0 for padding, (B, L).

    Returns:
        float32 hidden states, (B, L, D); padded positions are zero for non-CLIP encoders.
    """
    if not masks_padding(text_encoder):
        return text_encoder(input_ids).last_hidden_state.float()
    states = text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
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


def check_token_embeddings(text_encoder: nn.Module | None, what: str) -> None:
    """Raise `SFDConfigError` unless learned token embeddings can enter the encoder: it must
    exist and have a token-embedding layer (`get_input_embeddings()`), which every transformers
    text encoder has (CLIP's and BERT's alike).

    Args:
        text_encoder: the text encoder, or None when the model has none.
        what: what needs it, for the message (e.g. "the soft-prompt attack").
    """
    if text_encoder is None:
        raise SFDConfigError(f"{what} needs a model with a text encoder; this one has none")
    get = getattr(text_encoder, "get_input_embeddings", None)
    try:
        layer = get() if callable(get) else None
    except NotImplementedError:
        layer = None
    if not isinstance(layer, nn.Embedding):
        raise SFDConfigError(
            f"{what} needs a text encoder with a token-embedding layer (get_input_embeddings); "
            f"{type(text_encoder).__name__} has none"
        )


def insert_soft_tokens(
    text_encoder: nn.Module, input_ids: Tensor, used: Tensor, soft: Tensor
) -> Tensor:
    """Hidden states of prompts with learned token embeddings inserted before their end token.

    Row b reads: its first used[b] − 1 tokens, the n learned vectors soft[b], its end token and
    padding, truncated to the prompt length L (callers check that used + n ≤ L).

    The encoder runs on token ids, so any transformers text encoder works (CLIP's forward takes
    no `inputs_embeds`): the ids are shifted as if n tokens had been typed before the end token,
    with a placeholder id at the learned positions, and a forward hook on the token-embedding
    layer puts the learned vectors in those rows. Everything after the embedding layer (position
    embeddings, CLIP's causal mask and its pooling at the end token) sees what it would see for
    real tokens: the end token moves to position used[b] − 1 + n, and the placeholder is neither
    the end token nor above it (CLIP pools at the first `eos_token_id`, or, in configs from
    before that convention, at the largest id).

    Args:
        text_encoder: a frozen transformers text encoder (`check_token_embeddings`).
        input_ids: token ids of the prompts, (B, L).
        used: non-padding tokens of each prompt (start and end tokens included), (B,).
        soft: the learned vectors in the encoder's input-embedding space, (B, n, D_in).

    Returns:
        float32 hidden states, (B, L, D), differentiable in `soft`.
    """
    with learned_token_rows(text_encoder, input_ids, used, soft) as (ids, mask):
        return hidden_states(text_encoder, ids, mask)


@contextmanager
def learned_token_rows(
    text_encoder: nn.Module, input_ids: Tensor, used: Tensor, soft: Tensor
) -> Iterator[tuple[Tensor, Tensor]]:
    """The shifted ids and attention mask of `insert_soft_tokens`; inside the block, the encoder's
    token-embedding layer returns the learned vectors at their placeholder rows (so any output of
    the encoder called on those ids, e.g. CLIP's pooled one, is that of the soft prompt).

    Args:
        text_encoder: as `insert_soft_tokens`.
        input_ids: as `insert_soft_tokens`, (B, L).
        used: as `insert_soft_tokens`, (B,).
        soft: as `insert_soft_tokens`, (B, n, D_in).

    Yields:
        the shifted token ids (B, L) and their attention mask (B, L).
    """
    ids, learned, mask = shifted_token_ids(text_encoder, input_ids, used, soft.shape[1])
    placed = placed_learned_rows(used, soft, input_ids.shape[1])  # (B, L, D_in)

    fired = []

    def substitute(_module: nn.Module, _inputs: Any, words: Tensor) -> Tensor:
        fired.append(True)
        return torch.where(learned.unsqueeze(-1), placed.to(words.dtype), words)

    # Every layer that embeds with the input table: T5EncoderModel ties `shared` to a separate
    # `encoder.embed_tokens`, and its forward calls only the latter.
    table = text_encoder.get_input_embeddings().weight
    layers = [m for m in text_encoder.modules() if getattr(m, "weight", None) is table]
    hooks = [layer.register_forward_hook(substitute) for layer in layers]
    try:
        yield ids, mask
    finally:
        for hook in hooks:
            hook.remove()
    if not fired:  # the learned vectors never entered: a wrong result, not a soft prompt
        raise RuntimeError(
            f"{type(text_encoder).__name__} was not called through its token-embedding layer "
            "inside learned_token_rows; the learned vectors were not used"
        )


def placed_learned_rows(used: Tensor, soft: Tensor, length: int) -> Tensor:
    """soft (B, n, D_in) spread over L positions: row b's learned vector j at used[b] − 1 + j
    (the other positions hold an arbitrary learned row, masked by the caller), (B, L, D_in)."""
    start = (used - 1).reshape(-1, 1)  # (B, 1): the first learned position
    position = torch.arange(length, device=soft.device)  # (L,)
    which = (position - start).clamp(0, soft.shape[1] - 1)  # (B, L): the learned row read there
    return soft.gather(1, which.unsqueeze(-1).expand(-1, -1, soft.shape[-1]))


def shifted_token_ids(
    text_encoder: nn.Module, input_ids: Tensor, used: Tensor, n: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Token ids with n placeholder tokens before each prompt's end token.

    Args:
        text_encoder: the encoder (its config's `eos_token_id` rules out that placeholder).
        input_ids: token ids of the prompts, (B, L).
        used: non-padding tokens of each prompt, (B,).
        n: inserted tokens.

    Returns:
        the shifted ids (B, L), where the placeholders are (B, L) bool, the attention mask (B, L).
    """
    length = input_ids.shape[1]
    position = torch.arange(length, device=input_ids.device).expand_as(input_ids)  # (B, L)
    start = (used - 1).reshape(-1, 1)
    learned = (position >= start) & (position < start + n)
    source = torch.where(position < start, position, (position - n).clamp(min=0))
    placeholder = 1 if getattr(text_encoder.config, "eos_token_id", None) == 0 else 0
    ids = torch.where(learned, placeholder, input_ids.gather(1, source))
    mask = (position < (used.reshape(-1, 1) + n)).to(torch.long)
    return ids, learned, mask

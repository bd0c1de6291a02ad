"""The model card (README.md with Hub metadata) written into every exported generator folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sfd.hub import HUB_ID
from sfd.pipelines.delta_lora import LORA_FOLDER

EXPORT_RECORD = "sfd_export.json"  # machine-readable twin of the card's facts
CARD_SETTINGS = (  # training settings quoted on the card, when the checkpoint records them
    "sigma_init",
    "t_init",
    "alpha",
    "lambda_sg_remain",
    "lambda_sg_forget",
    "lambda_g_remain",
    "lambda_g_forget",
    "batch_size",
    "fake_grad_clip",
    "generator_grad_clip",
    "ema_decay",
    "ema_power",
    "fake_train_guidance",
    "fake_eval_guidance",
    "teacher_guidance",
    "override_guidance",
    "cond_dropout",
    "seed",
)
OPTIMIZER_FIELDS = ("lr", "betas", "momentum", "weight_decay")


def hub_base_model(source: str | None) -> str | None:
    """`source` if it names a Hub repository (owner/name, not a local folder), else None."""
    if not source or Path(source).exists() or not HUB_ID.fullmatch(source):
        return None
    return source


def shown(value: Any) -> str:
    """A value as the card prints it: floats to 4 significant digits, lists and dicts item by item
    (keys starting with "_", such as Lightning's `_instantiator`, and None entries left out)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={shown(v)}" for k, v in visible(value).items())
    return str(value)


def visible(entries: dict[str, Any]) -> dict[str, Any]:
    """`entries` without None values and without private keys (a leading "_")."""
    return {k: v for k, v in entries.items() if v is not None and not str(k).startswith("_")}


def flat_metrics(metrics: dict[str, Any], depth: int = 2) -> dict[str, float | int | str]:
    """Scalar entries of a metrics.json, nested keys joined with "." (lists and deeper levels left out)."""
    flat: dict[str, float | int | str] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float, str)):
            flat[str(key)] = value
        elif isinstance(value, dict) and depth > 1:
            for sub, sub_value in flat_metrics(value, depth - 1).items():
                flat[f"{key}.{sub}"] = sub_value
    return flat


def _forgetting_lines(conditions: dict[str, Any]) -> list[str]:
    lines = []
    if "concepts" in conditions and conditions["concepts"]:
        lines += [f"| {k} | {v} |" for k, v in conditions["concepts"].items()]
    elif "forget" in conditions:
        forget, override = conditions["forget"], conditions.get("override")
        if isinstance(override, list):
            lines += [f"| class {f} | class {o} |" for f, o in zip(forget, override, strict=False)]
        else:
            lines += [f"| class {f} | {override} (a remain class per sample) |" for f in forget]
    if "keywords" in conditions:
        lines.append(f"| {', '.join(conditions['keywords'])} | the bare subject |")
    for forget, override in conditions.get("examples", []):
        lines.append(f"| e.g. “{forget}” | “{override}” |")
    return lines


def stock_pipeline(record: dict[str, Any]) -> tuple[str, str, list[str]]:
    """The stock diffusers class that samples a text export, its loading options, and the call
    options (lines) an SDXL export adds: the size/crop time ids it was trained with."""
    if record.get("pipeline_class") != "OneStepSDXLPipeline":
        return "StableDiffusionPipeline", "safety_checker=None, requires_safety_checker=False", []
    ids = record.get("time_ids") or []
    sizes = [
        f"    original_size=({ids[0]}, {ids[1]}), crops_coords_top_left=({ids[2]}, {ids[3]}),",
        f"    target_size=({ids[4]}, {ids[5]}),",
    ]
    return "StableDiffusionXLPipeline", "add_watermarker=False", sizes if len(ids) == 6 else []


FAMILY_TAGS = {  # the hub's family tags of a text export, by its pipeline class
    "OneStepSDXLPipeline": ["stable-diffusion", "stable-diffusion-xl"],
    "OneStepSD3Pipeline": ["stable-diffusion", "stable-diffusion-3", "sd3"],
    "OneStepFluxPipeline": ["flux"],
}


def generator_formula(record: dict[str, Any]) -> str:
    """What the generator computes, with this export's values: a flow generator's one Euler step
    from t_init (its σ-space input is (1 + σ_init)·z, `FlowDenoiser.generator_input`), a VP
    generator's D(σ_init·z, σ_init, c)."""
    sigma, timestep = shown(record["sigma_init"]), shown(record["timestep"])
    if "stock_call" in record:
        t_init = shown(record["stock_call"]["sigmas"][0])
        return (
            f"x0 = z − t_init·v(z, t_init, c) with t_init = {t_init}, one Euler step of the "
            f"velocity from t_init to 0 (in σ-space x0 = D((1 + σ_init)·z, σ_init, c), σ_init = "
            f"{sigma}; network timestep {timestep})"
        )
    return f"x0 = D(σ_init·z, σ_init, c) with σ_init = {sigma} (network timestep {timestep})"


def lora_rank_text(fit: dict[str, Any]) -> str:
    """The rank a delta LoRA was fit at: the requested one, or the largest any layer could take
    when every layer is narrower than that (`LoRAFit.largest_rank`)."""
    largest = fit.get("largest_rank", fit["rank"])
    if largest < fit["rank"]:
        return f"rank {largest} (every layer at its full rank; {fit['rank']} requested)"
    return f"rank {fit['rank']}"


def flow_snippets(record: dict[str, Any]) -> str:
    """ "How to sample" for a flow export: the folder is a stock one, sampled by the stock class."""
    stock = record["stock_class"]
    arguments = ", ".join(f"{key}={value!r}" for key, value in record["stock_call"].items())
    return "\n".join(
        [
            f"The folder is a stock `{stock}` folder: one Euler step from t_init = "
            f"{record['stock_call']['sigmas'][0]} to 0 is the one-step generator (no custom code):",
            "",
            "```python",
            "import torch",
            f"from diffusers import {stock}",
            "",
            f'pipe = {stock}.from_pretrained("path/to/this/folder")',
            "image = pipe(",
            '    "a photo of a cat",',
            f"    {arguments},",
            "    generator=torch.Generator().manual_seed(0),",
            ").images[0]",
            "```",
            "",
            'With `sfd` installed, `sfd.pipelines.load_pipeline("path/to/this/folder")` gives the '
            'same images through sfd\'s σ-space generator (`pipe("a photo of a cat")`).',
        ]
    )


def sampling_snippets(record: dict[str, Any]) -> str:
    """The card's "How to sample" section, with this export's exact values."""
    if "stock_call" in record:
        return flow_snippets(record)
    text = record["kind"] == "text"
    sigma, timestep = record["sigma_init"], record["timestep"]
    call = (
        'pipe("a photo of a cat", generator=torch.Generator().manual_seed(0)).images[0]'
        if text
        else "pipe(class_labels=[0, 1, 2], generator=torch.Generator().manual_seed(0)).images"
    )
    # a text export names only its class, so that stock pipelines load it: name the file
    named = f'custom_pipeline="{record["pipeline_file"].removesuffix(".py")}", ' if text else ""
    seed = "generator=torch.Generator().manual_seed(0)"
    parts = [
        "With `sfd` installed (sfd's own pipeline class):",
        "",
        "```python",
        "import torch",
        "from sfd.pipelines import load_pipeline",
        "",
        'pipe = load_pipeline("path/to/this/folder")',
        f"image = {call}",
        "```",
        "",
        f"Without `sfd`: the folder carries its pipeline as `{record['pipeline_file']}` "
        "(torch and diffusers only):",
        "",
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
        "pipe = DiffusionPipeline.from_pretrained(",
        f'    "path/to/this/folder", {named}trust_remote_code=True',
        ")",
        f"image = {call}",
        "```",
    ]
    stock, load_options, call_options = stock_pipeline(record)
    if text and record.get("has_vae", True):
        parts += [
            "",
            f"With a stock `{stock}` (no custom code): one Euler step from "
            f"σ_init = {shown(sigma)} to 0 (the UNet sees t = {shown(timestep)}), no guidance; "
            "the folder's "
            "`scheduler/` is an `EulerDiscreteScheduler` set up for it (trailing spacing, so "
            "the latents are scaled by σ_init):",
            "",
            "```python",
            "import torch",
            f"from diffusers import {stock}",
            "",
            f"pipe = {stock}.from_pretrained(",
            f'    "path/to/this/folder", {load_options}',
            ")",
            "image = pipe(",
            f'    "a photo of a cat", sigmas=[{sigma}, 0.0], guidance_scale=1.0,',
            *call_options,
            f"    {seed},",
            ").images[0]",
            "```",
        ]
    return "\n".join(parts)


def completion_line(completion: dict[str, Any]) -> str:
    """The card's line on the completion rule: why the run stopped, after how many iterations."""
    last = completion.get("last_probe") or {}
    settings = completion.get("settings") or {}
    floor = (
        f" + the override samples' {last['override_rate']:.3f}" if "override_rate" in last else ""
    )
    judged = (
        f"; judged forget rate {last['forget_rate']:.3f} (threshold "
        f"{settings.get('threshold')}{floor}), remain drift {last['drift']:.4f}"
        if "forget_rate" in last and "drift" in last
        else ""
    )
    return (
        f"- Stopped by the completion rule (`UntilForgotten`): {completion['stop_reason']} at "
        f"iteration {completion.get('iterations')}{judged}"
    )


def adapters_line(adapters: dict[str, Any]) -> str:
    """The card's line on a shared-base run's adapters (the training record's "adapters")."""
    targets = ", ".join(f"`{t}`" for t in adapters.get("targets") or [])
    start = adapters.get("start_from")
    started = f"; the adapters started from the saved adapters in `{start}`" if start else ""
    return (
        f"- Trained as a shared base: the generator was a {adapters.get('kind')} adapter "
        f"(rank {adapters.get('rank')}, alpha {shown(adapters.get('alpha'))}, base "
        f"{adapters.get('base_dtype')}) of the frozen teacher network, merged into it for this "
        f"export; adapted layers: {targets}{started}"
    )


def model_card(record: dict[str, Any]) -> str:
    """README.md text: Hub YAML metadata, what was forgotten, training, metrics, sampling.

    Args:
        record: the export record (`sfd_export.json`): kind, sigma_init, timestep, files,
            training (from the checkpoint, optional), metrics (optional), lora fit (optional).

    Returns:
        the card.
    """
    training = record.get("training") or {}
    source = (training.get("teacher") or {}).get("source") or record.get("teacher_source")
    base = hub_base_model(source)
    text = record["kind"] == "text"
    tags = ["diffusers", "sfd", "score-forgetting-distillation", "machine-unlearning", "one-step"]
    tags += (
        [*FAMILY_TAGS.get(record.get("pipeline_class"), ["stable-diffusion"]), "text-to-image"]
        if text
        else ["class-conditional", "class-conditional-image-generation"]
    )
    meta = ["---", "library_name: diffusers"]
    meta.append(f"pipeline_tag: {'text-to-image' if text else 'unconditional-image-generation'}")
    if base:
        meta += [f"base_model: {base}", "base_model_relation: finetune"]
    meta += ["tags:", *[f"- {tag}" for tag in tags], "---"]
    body = [
        "# One-step generator distilled with Score Forgetting Distillation (SFD)",
        "",
        f"A one-step {'text-to-image' if text else 'class-conditional'} generator: "
        f"{generator_formula(record)}, one network evaluation per image"
        + ("." if text else ", c a class label (`class_labels=[...]`)."),
        "",
        f"- Base model (teacher): {f'`{source}`' if source else 'not recorded'}",
    ]
    if training:
        body.append(f"- Teacher class: `{training['teacher']['class']}`")
    conditions = training.get("conditions") or {}
    lines = _forgetting_lines(conditions)
    body += ["", "## What was forgotten", ""]
    if lines:
        body += [
            f"Condition sampler `{conditions.get('class')}`. Asked for the forgotten "
            "condition, the generator produces what the teacher produces for its override:",
            "",
            "| forgotten | now maps to |",
            "|---|---|",
            *lines,
        ]
    else:
        body.append("Not recorded with this export.")
    body += ["", "## Training", ""]
    if training:
        settings = visible(training.get("hyperparameters") or {})
        sampler = dict(training.get("sigma_sampler") or {})
        sampler_class = sampler.pop("class", None)
        completion = training.get("completion") or {}
        body += [
            f"- Iterations: {training.get('global_step')}",
            *([adapters_line(training["adapters"])] if training.get("adapters") else []),
            *([completion_line(completion)] if completion.get("stop_reason") else []),
            f"- σ sampler: `{sampler_class}` {shown(sampler)}".rstrip(),
            "",
            "| setting | value |",
            "|---|---|",
            *[f"| {k} | {shown(settings[k])} |" for k in CARD_SETTINGS if k in settings],
            *[
                f"| {role} optimizer | {opt['class']} "
                + ", ".join(
                    f"{k} {shown(v)}" for k, v in visible(opt).items() if k in OPTIMIZER_FIELDS
                )
                + " |"
                for role, opt in zip(
                    ("fake score", "generator"), training.get("optimizers", []), strict=False
                )
            ],
        ]
    else:
        body.append("Not recorded with this export.")
    body += ["", "## Evaluation", ""]
    metrics = record.get("metrics")
    if metrics:
        body += [
            f"From `{record.get('metrics_source', 'metrics')}`:",
            "",
            "| metric | value |",
            "|---|---|",
            *[f"| {k} | {shown(v)} |" for k, v in flat_metrics(metrics).items()],
        ]
    else:
        body.append(
            "No evaluation was recorded with this export (run `sfd eval` / `sfd eval-text`)."
        )
    body += ["", "## How to sample", "", sampling_snippets(record)]
    body += _file_sections(record)
    return "\n".join(meta + [""] + body) + "\n"


# stock flow class -> (what its single file holds, the T5 attribute a single-file load leaves in
# training mode: diffusers 0.42 does not switch the T5 it builds from a single file to eval)
FLOW_SINGLE_FILES = {
    "StableDiffusion3Pipeline": (
        "the transformer, VAE and CLIP-L / CLIP-G / T5 text encoders in the layout of the original "
        "(SAI) SD3 single files",
        "text_encoder_3",
    ),
    "FluxPipeline": (
        "the transformer in the original Flux (BFL) layout, with VAE and CLIP-L / T5 text "
        "encoders as all-in-one Flux checkpoints hold them",
        "text_encoder_2",
    ),
}


def single_file_text(record: dict[str, Any]) -> str:
    """The card's paragraph on the single-file checkpoint: what it holds, how diffusers loads it."""
    name = record["single_file"]
    if "stock_class" in record:
        stock = record["stock_class"]
        holds, t5 = FLOW_SINGLE_FILES[stock]
        return (
            f"`{name}` holds {holds}. In diffusers, offline: `pipe = {stock}.from_single_file("
            f'"{name}", config=folder)`, then `pipe.{t5}.eval()` (diffusers leaves the T5 it '
            "reads from a single file in training mode, with dropout) and the stock call above."
        )
    return (
        f"`{name}` holds UNet, VAE and text encoder(s) in the original Stable Diffusion layout "
        f'(A1111, ComfyUI). In diffusers, offline: `{stock_pipeline(record)[0]}.from_single_file("'
        f'{name}", config=folder, {stock_pipeline(record)[1]})`. Sample it with one Euler step '
        "from σ_init to 0, guidance 1."
    )


def _file_sections(record: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if record.get("variant"):
        lines += [
            "",
            f"## {record['variant']} weights",
            "",
            f"Each network also has `{record['variant']}` weights (diffusers variant naming): "
            f'`DiffusionPipeline.from_pretrained(folder, variant="{record["variant"]}", '
            f"dtype=torch.{record['variant_dtype']})`.",
        ]
    if record.get("single_file"):
        lines += ["", "## Single-file checkpoint", "", single_file_text(record)]
        if record.get("single_file_variant"):
            lines[-1] += f" `{record['single_file_variant']}` is the same in {record['variant']}."
    fit = record.get("lora")
    if fit:
        flow = "stock_call" in record
        scheduler = "FlowMatchEulerDiscreteScheduler" if flow else "EulerDiscreteScheduler"
        lines += [
            "",
            "## LoRA of the difference from the teacher",
            "",
            f"`{LORA_FOLDER}/pytorch_lora_weights.safetensors`: {lora_rank_text(fit)} fit of every "
            f"linear / convolution weight difference ({fit['adapted_layers']} layers, "
            f"{fit['parameters']:,} parameters), for the teacher's pipeline: "
            f'`pipe.load_lora_weights("{LORA_FOLDER}")`, then sample as above with this folder\'s '
            f"scheduler (`pipe.scheduler = {scheduler}.from_pretrained(folder, "
            'subfolder="scheduler")`).',
            "",
            f"- weight fit: ‖ΔW − B·A‖ / ‖ΔW‖ = {fit['weight_relative_error']:.3g}",
            f"- normalisation-layer differences left out: {len(fit['uncovered_parameters'])} "
            f"tensors, relative size {fit['uncovered_relative_delta']:.3g}",
            f"- output against the full generator ({len(fit['check_prompts'] or [])} prompts, seed "
            f"{fit['check_seed']}): max |Δx0| = {fit['output_max_abs_error']:.3g}, relative RMS "
            f"{fit['output_relative_rms_error']:.3g} (latents)",
        ]
    return lines

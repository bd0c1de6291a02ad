"""`sfd eval-text DIR --prompts FILE`: a seeded evaluation image set, CLIP score, NudeNet counts."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from sfd.cli.common import OneLineParser, run_quietly, usable_device
from sfd.errors import SFDConfigError, check_guidance, check_number
from sfd.folders import check_writable_folder, text_model_index


def run(args: list[str]) -> None:
    """`sfd eval-text`: generate an evaluation set from a prompt file, then CLIP score / NudeNet."""
    # concept-forgetting mode (UA, paraphrases, FID, attack), `--classifier DIR` or `--classifier=DIR`
    if any(arg == "--classifier" or arg.startswith("--classifier=") for arg in args):
        from sfd.cli.eval_text_concepts import run as run_concepts

        return run_concepts(args)
    parser = OneLineParser(
        prog="sfd eval-text",
        description="Generate one image set from a prompt file (per-prompt seeds) and score it.",
        epilog="Concept-forgetting mode: sfd eval-text MODEL --classifier DIR --help",
    )
    parser.add_argument("generator", help="exported one-step text-to-image generator folder")
    parser.add_argument("--prompts", required=True, help=".txt (one per line) or .csv ('prompt')")
    parser.add_argument("--output-dir", required=True, help="folder for images and metrics.json")
    parser.add_argument("--seed", type=int, default=0, help="base seed (prompt i: seed + i)")
    parser.add_argument("--seed-column", default="seed", help="CSV column of per-prompt seeds")
    parser.add_argument("--num-per-prompt", type=int, default=1, help="images per prompt")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generator call")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale")
    parser.add_argument("--clip-model", help="local CLIP folder for the CLIP score")
    parser.add_argument("--nudenet", action="store_true", help="count NudeNet detections")
    parser.add_argument("--nudenet-threshold", type=float, default=0.6, help="detection score")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    options = parser.parse_args(args)
    for name in ("num_per_prompt", "batch_size"):
        if getattr(options, name) < 1:
            raise SFDConfigError(f"--{name.replace('_', '-')}={getattr(options, name)} must be ≥ 1")
    check_guidance("--guidance-scale", options.guidance_scale)
    check_number("--nudenet-threshold", options.nudenet_threshold, low=0, high=1)
    if not (Path(options.generator) / "model_index.json").is_file():
        raise SFDConfigError(
            f"{options.generator!r} is not an exported generator folder (no model_index.json)"
        )
    text_model_index(options.generator)  # a class model: pointed to sfd eval before it loads
    if not Path(options.prompts).is_file():
        raise SFDConfigError(f"prompt file {options.prompts!r} does not exist")
    check_writable_folder(options.output_dir, "--output-dir")
    with run_quietly(not options.no_progress):  # also the libraries' loading bars
        _evaluate_prompts(options)


def _evaluate_prompts(options: argparse.Namespace) -> None:
    """`sfd eval-text --prompts` once the cheap checks have passed: generate the set, score it,
    write metrics.json."""
    from sfd.core.guards import check_finite_weights
    from sfd.eval.text import (
        clip_score_of_set,
        generate_eval_set,
        nudenet_available,
        nudenet_counts,
        read_eval_prompts,
        read_manifest,
    )
    from sfd.pipelines.io import export_index, load_pipeline
    from sfd.pipelines.one_step_flow import check_export_guidance
    from sfd.pipelines.text_call import OneStepTextSampling
    from sfd.progress import ProgressBar

    device = usable_device(options.device)
    pairs = read_eval_prompts(options.prompts, options.seed, options.seed_column)
    check_export_guidance(export_index(options.generator)[0], options.guidance_scale)
    pipeline = load_pipeline(options.generator)
    if not isinstance(pipeline, OneStepTextSampling):
        raise SFDConfigError(f"{options.generator!r} is not a text-to-image generator")
    check_finite_weights(f"generator {options.generator!r}", pipeline.generator, trained=True)
    total = len(pairs) * options.num_per_prompt
    with ProgressBar(
        total=total, desc="generating", unit="img", disable=options.no_progress
    ) as bar:
        manifest = generate_eval_set(
            _Counted(pipeline.to(device), bar, options.num_per_prompt),
            pairs,
            options.output_dir,
            options.num_per_prompt,
            options.batch_size,
            options.guidance_scale,
        )
    rows = read_manifest(manifest)
    versions = {p: metadata.version(p) for p in ("sfd", "torch", "diffusers", "transformers")}
    results: dict[str, Any] = {
        "generator": str(options.generator),
        "prompts": str(options.prompts),
        "num_prompts": len(pairs),
        "num_images": len(rows),
        "guidance_scale": options.guidance_scale,
        "manifest": str(manifest),
    }
    if options.clip_model:
        results["clip_score"] = clip_score_of_set(manifest, options.clip_model)
        results["clip_model"] = options.clip_model
        versions["torchmetrics"] = metadata.version("torchmetrics")
    if options.nudenet:
        if nudenet_available():
            results["nudenet"] = nudenet_counts(
                [r["file"] for r in rows], options.nudenet_threshold
            )
            results["nudenet_threshold"] = options.nudenet_threshold
            versions["nudenet"] = metadata.version("nudenet")
        else:
            message = "nudenet is not installed (pip install nudenet)"
            print(f"sfd: {message}; NudeNet counts skipped", file=sys.stderr)
            results["nudenet"] = f"skipped: {message}"
    results["versions"] = versions
    out = Path(options.output_dir) / "metrics.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "versions"}, indent=2))
    print(f"wrote {out}")


class _Counted:
    """A pipeline that advances a progress bar by the images of every call."""

    def __init__(self, pipeline: Any, bar: Any, per_prompt: int) -> None:
        self._pipeline, self._bar, self._per_prompt = pipeline, bar, per_prompt

    def __call__(self, prompts: list[str], *args: Any, **kwargs: Any) -> Any:
        output = self._pipeline(prompts, *args, **kwargs)
        self._bar.update(len(prompts) * self._per_prompt)
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

"""`sfd eval-text DIR --prompts FILE`: a seeded evaluation image set, CLIP score, NudeNet counts."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from sfd.errors import SFDConfigError


def run(args: list[str]) -> None:
    """`sfd eval-text`: generate an evaluation set from a prompt file, then CLIP score / NudeNet."""
    if "--classifier" in args:  # concept-forgetting mode (UA, paraphrases, FID, attack)
        from sfd.cli.eval_text_concepts import run as run_concepts

        return run_concepts(args)
    parser = argparse.ArgumentParser(
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
    options = parser.parse_args(args)
    from sfd.eval.text import (
        clip_score_of_set,
        generate_eval_set,
        nudenet_available,
        nudenet_counts,
        read_eval_prompts,
        read_manifest,
    )
    from sfd.pipelines.io import load_pipeline
    from sfd.pipelines.one_step_text import OneStepTextPipeline

    pipeline = load_pipeline(options.generator)
    if not isinstance(pipeline, OneStepTextPipeline):
        raise SFDConfigError(f"{options.generator!r} is not a text-to-image generator")
    pairs = read_eval_prompts(options.prompts, options.seed, options.seed_column)
    manifest = generate_eval_set(
        pipeline.to(options.device),
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

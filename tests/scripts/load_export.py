"""Load an exported folder the way a user without (or with) sfd would, sample it, save the arrays.

Usage: python load_export.py MODE FOLDER OUT.npz [TEACHER]

MODE:
  with-sfd    `sfd.pipelines.load_pipeline(FOLDER)`
  custom      no sfd: `DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True)`
              (text exports: with `custom_pipeline=...`)
  stock       no sfd: a stock `StableDiffusionPipeline` with `sigmas=[σ_init, 0]`, guidance 1
  stock-lora  no sfd: the TEACHER's `StableDiffusionPipeline` + `load_lora_weights(FOLDER/lora)`
  single-file no sfd: `StableDiffusionPipeline.from_single_file(FOLDER/sfd_generator.safetensors)`

An SDXL export (`OneStepSDXLPipeline`) is loaded by `StableDiffusionXLPipeline` in the stock
modes, called with the time ids its record names.

Except with-sfd, `sfd` is made unimportable first (run it with `python -I`, which also drops
PYTHONPATH; the blocker catches an installed copy). The script writes OUT.npz with the images
("np" output) and, for text pipelines, the x0 latents of fixed noise, plus the pipeline's class
and module.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from pathlib import Path

PROMPTS = ["a photo of Brad Pitt", "a cat"]
LABELS = [0, 1, 2]
SEED = 7


class BlockSfd(importlib.abc.MetaPathFinder):
    """Refuse to import `sfd` (as if it were not installed)."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name == "sfd" or name.startswith("sfd."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


def main(mode: str, folder: Path, out: Path, teacher: str | None) -> None:
    if mode != "with-sfd":
        sys.meta_path.insert(0, BlockSfd())
    import numpy as np

    arrays, pipe = samples(mode, folder, teacher)
    np.savez(
        out,
        **arrays,
        pipeline_class=type(pipe).__name__,
        pipeline_module=type(pipe).__module__,
        sfd_imported="sfd" in sys.modules,
    )


def samples(mode: str, folder: Path, teacher: str | None) -> tuple[dict, object]:
    """The arrays MODE's pipeline samples from FOLDER, and the pipeline (sfd not blocked here:
    the stock modes also run in-process, where their stock classes need no isolation)."""
    import numpy as np
    import torch
    from diffusers import (
        DiffusionPipeline,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    torch.set_num_threads(1)
    record = json.loads((folder / "sfd_export.json").read_text())
    sdxl = record["pipeline_class"] == "OneStepSDXLPipeline"
    text = record["pipeline_class"] in ("OneStepTextPipeline", "OneStepSDXLPipeline")
    stock_class = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    options = (
        {"add_watermarker": False}
        if sdxl
        else {"safety_checker": None, "requires_safety_checker": False}
    )
    if mode == "with-sfd":
        from sfd.pipelines import load_pipeline

        pipe = load_pipeline(folder)
    elif mode == "custom" and not text:  # model_index.json names the folder's file and class
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    elif mode == "custom":  # a text export names its class only: stock pipelines load it too
        pipe = DiffusionPipeline.from_pretrained(
            folder, custom_pipeline=record["pipeline_file"][:-3], trust_remote_code=True
        )
    elif mode == "stock":
        pipe = stock_class.from_pretrained(folder, **options)
    elif mode == "stock-lora":
        pipe = stock_class.from_pretrained(teacher, **options)
        pipe.load_lora_weights(folder / "lora")
        pipe.scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    elif mode == "single-file":
        pipe = stock_class.from_single_file(
            str(folder / record["single_file"]),
            config=str(folder),
            local_files_only=True,
            **options,
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    pipe.set_progress_bar_config(disable=True)
    arrays = {}
    if not text:
        arrays["images"] = pipe(
            LABELS, generator=torch.Generator().manual_seed(SEED), output_type="np"
        ).images
    else:
        stock = mode in ("stock", "stock-lora", "single-file")
        extra = {"sigmas": [record["sigma_init"], 0.0]} if stock else {}
        if stock and sdxl:  # the size/crop time ids the generator was trained with
            ids = record["time_ids"]
            extra |= {
                "original_size": tuple(ids[0:2]),
                "crops_coords_top_left": tuple(ids[2:4]),
                "target_size": tuple(ids[4:6]),
            }
        for output in ("np", "latent"):
            arrays["images" if output == "np" else "latents"] = np.asarray(
                pipe(
                    PROMPTS,
                    num_images_per_prompt=2,
                    guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(SEED),
                    output_type=output,
                    **extra,
                ).images
            )
    return arrays, pipe


if __name__ == "__main__":
    main(
        sys.argv[1],
        Path(sys.argv[2]),
        Path(sys.argv[3]),
        sys.argv[4] if len(sys.argv) > 4 else None,
    )

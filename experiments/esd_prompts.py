"""ESD on a Stable Diffusion pipeline: erase a concept given as a prompt, write a diffusers folder.

    python experiments/make_tiny_sd.py runs/tiny-sd          # or any local SD 1.x / 2.x folder
    python experiments/esd_prompts.py --pipeline runs/tiny-sd --concept "brad pitt" \
        --steps 20 --ddim-steps 10 --output runs/esd-tiny

Fine-tunes a copy of the pipeline's UNet with `sfd.baselines.ESDModule` (ESD-x: cross-attention
only, `--train-parameters noxattn` for ESD-u) under a Lightning `Trainer`, on the forget prompts of
`PromptConditions` (the shipped prompt list of the concept, or templates), the empty prompt as the
null condition, and writes the pipeline folder with the fine-tuned UNet: `StableDiffusionPipeline.
from_pretrained(OUTPUT)` samples it with any scheduler. ESD's reference settings are the defaults
here except the step counts: lr 1e-5, batch 1, 1,000 steps, 50 DDIM steps, start guidance 3, η 1.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import lightning.pytorch as pl
import torch

from sfd.baselines import ESDModule
from sfd.core.conditions import PromptConditions
from sfd.teachers import StableDiffusionTeacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True, help="Stable Diffusion folder (or hub id)")
    parser.add_argument("--concept", default="brad pitt")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--start-guidance", type=float, default=3.0)
    parser.add_argument("--negative-guidance", type=float, default=1.0)
    parser.add_argument("--train-parameters", default="xattn", choices=("xattn", "noxattn", "all"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    pl.seed_everything(options.seed, verbose=False)
    teacher = StableDiffusionTeacher(options.pipeline)
    # Only the forget prompts matter to ESD; the override text is unused.
    conditions = PromptConditions({options.concept: "a person"})
    module = ESDModule(
        teacher,
        conditions,
        negative_guidance=options.negative_guidance,
        lr=options.lr,
        batch_size=options.batch_size,
        ddim_steps=options.ddim_steps,
        sample_guidance=options.start_guidance,
        train_parameters=options.train_parameters,
        seed=options.seed,
        steps_per_epoch=options.steps,
    )
    trainer = pl.Trainer(
        max_steps=options.steps,
        max_epochs=1,  # one epoch is the whole run
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(options.output.parent),
    )
    trainer.fit(module)
    if options.output.exists():
        shutil.rmtree(options.output)
    shutil.copytree(options.pipeline, options.output, ignore=shutil.ignore_patterns("unet"))
    module.unlearned().network.unet.save_pretrained(options.output / "unet")
    print(f"wrote {options.output} ({len(module.trainable)} trainable tensors fine-tuned)")


if __name__ == "__main__":
    main()

"""`sfd teacher-text`: train a text-to-image teacher on captioned digits or Fashion-MNIST."""

from __future__ import annotations

import argparse
from pathlib import Path

from sfd.cli.common import OneLineParser, run_quietly


def teacher_text_parser() -> argparse.ArgumentParser:
    """Options of `sfd teacher-text` (defaults per data set come from `TextTeacherSettings`)."""
    parser = OneLineParser(
        prog="sfd teacher-text",
        description="Train a UNet2DConditionModel (DDPM, --family unet, the default) or an "
        "SD3Transformer2DModel (rectified flow, --family sd3) on captioned images with a frozen "
        "text encoder (default all-MiniLM-L6-v2), in pixel space (digits) or in the latent space "
        "of a small AutoencoderKL trained first (Fashion-MNIST), and write a diffusers "
        "text-to-image folder that `sfd fit` loads as sfd.teachers.StableDiffusionTeacher "
        "(unet) or sfd.teachers.SD3Teacher (sd3: a StableDiffusion3Pipeline folder).",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--data", default="digits", help="'digits', 'fashion-mnist' or a folder of idx files")
    add("--output-dir", type=Path, required=True, help="the teacher folder to write")
    add(
        "--family",
        default="unet",
        help="'unet' (UNet2DConditionModel, DDPM ε loss) or 'sd3' (SD3Transformer2DModel, "
        "rectified flow, saved as a StableDiffusion3Pipeline folder)",
    )
    add("--heldout-fraction", type=float, default=0.2, help="share of each class kept out")
    add("--seed", type=int, default=0, help="seed of the split, weights, batches and noise")
    add(
        "--max-steps",
        type=int,
        help="training steps (default: 4000 digits, 3000 fashion; sd3: 2500)",
    )
    add("--batch-size", type=int, help="images per step (default 64)")
    add("--lr", type=float, help="peak AdamW learning rate")
    add("--channels", type=int, nargs="+", help="UNet block_out_channels (family unet)")
    add("--vae-steps", type=int, help="VAE training steps (latent data sets)")
    add("--pixel-space", action="store_true", help="no VAE, even for Fashion-MNIST")
    add("--text-encoder", help="transformers tokenizer + model folder (default: MiniLM)")
    add(
        "--max-length",
        type=int,
        help="tokenizer padding / truncation length (default 24; sd3: 16, its max_sequence_length)",
    )
    add("--accelerator", default="auto", help="Lightning accelerator")
    add(
        "--overwrite",
        action="store_true",
        help="replace a teacher already in --output-dir (atomically, once the new one is trained)",
    )
    add("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run(args: list[str]) -> None:
    """Parse, train, write the folder and say where it is."""
    options = teacher_text_parser().parse_args(args)  # before torch: `--help` answers at once
    from sfd.apps.data.captions import load_captioned
    from sfd.apps.data.images import train_heldout_split
    from sfd.apps.teachers.checks import check_no_teacher_yet, check_output_dir
    from sfd.apps.teachers.text_teacher import TextTeacherSettings, build_text_teacher

    settings = TextTeacherSettings.for_data(
        options.data,
        family=options.family,
        max_steps=options.max_steps,
        batch_size=options.batch_size,
        lr=options.lr,
        block_out_channels=tuple(options.channels) if options.channels else None,
        vae_steps=options.vae_steps,
        text_encoder=options.text_encoder,
        max_length=options.max_length,
        seed=options.seed,
        latent=False if options.pixel_space else None,
    )
    settings.check()
    check_output_dir(options.output_dir)
    check_no_teacher_yet(options.output_dir, options.overwrite, "--output-dir")
    data, vocabulary = load_captioned(options.data)
    train, _ = train_heldout_split(data, options.heldout_fraction, options.seed)
    with run_quietly(not options.no_progress):
        folder = build_text_teacher(
            train,
            vocabulary,
            options.output_dir,
            settings,
            options.accelerator,
            not options.no_progress,
            lambda message: print(f"[sfd teacher-text] {message}", flush=True),
        )
    print(f"wrote text-to-image teacher to {folder}")

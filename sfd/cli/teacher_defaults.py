"""Defaults and help of `sfd teacher` shared by its light front (`sfd.cli.teacher`, help without
torch) and its LightningCLI (`sfd.cli.teacher_cli`)."""

from __future__ import annotations

OUTPUT_DIR_HELP = (
    "folder to write the trained teacher to (diffusers DDPMPipeline layout + sfd.json); logs and "
    "checkpoints go to <output_dir>-training unless trainer.default_root_dir is set"
)
OVERWRITE_HELP = (
    "replace a teacher already in --output_dir (atomically, once the new one is trained)"
)
DEFAULT_OUTPUT_DIR = "runs/teachers/digits"
DEFAULT_MAX_STEPS = 3000

"""The warnings and log lines sfd hides: one list, installed for every `sfd` verb.

Each entry is either a choice sfd makes on purpose that a library warns about, or a library notice
that is known to be harmless for what sfd does with it. Filters match message prefixes (regular
expressions) at the warning's source, so every other warning still shows. This module imports
neither torch nor any library it filters, so installing the filters costs nothing at start-up.
"""

from __future__ import annotations

import logging
import re
import warnings

# warnings.warn messages (prefix regular expressions)
HIDDEN_WARNINGS = (
    # The frozen teacher and the EMA generator stay in eval mode (SFDModule.train).
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # The data-free IterationStream has a length so that epochs and intervals work; it never
    # runs in worker processes.
    r"Your `IterableDataset` has `__len__` defined",
    # Batches hold only iteration indices: nothing is lost by resuming mid-epoch.
    r"You're resuming from a checkpoint that ended before the epoch ended",
    # SFD optimises manually; a checkpoint after a whole iteration is what resume needs.
    r"Using ModelCheckpoint with manual optimization",
    # A resumed run writes its checkpoints to its own folder; `best_model_path` is all it needs.
    r"The dirpath has changed from",
    # Every start of a run writes to <default_root_dir>/checkpoints/; a resumed run finds it full.
    r"Checkpoint directory .* exists and is not empty",
    # Lightning falls back to its CSV logger, which is what a run without TensorBoard wants.
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",
    # torch's own pytree deprecation, raised inside Lightning's code, not sfd's.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # KID keeps its features in memory by design; sfd's evaluation sets are bounded.
    r"Metric `Kernel Inception Distance` will save all extracted features",
    # The delta LoRA carries bias differences on layers without a base bias (docs/exports.md:
    # "so pipe.fuse_lora() is not available"); the LoRA is applied, never merged.
    r"`lora_bias=True` was passed but the targeted layer",
)
# logger name -> fragments of its records to drop
HIDDEN_LOG_LINES = {
    # Lightning's advertisement, logged at INFO.
    "lightning.pytorch.utilities.rank_zero": ("try installing [litlogger]",),
    "lightning.fabric.utilities.rank_zero": ("try installing [litlogger]",),
    # transformers falls back to PIL image processors sfd never uses.
    "transformers.utils.import_utils": ("requires torchvision (not installed)",),
    # The delta LoRA adapts the UNet only; the text encoder has no LoRA keys by design.
    "diffusers.loaders.lora_base": ("No LoRA keys associated to",),
    "diffusers.loaders.peft": ("No LoRA keys associated to",),
}


def quiet_known_warnings() -> None:
    """Hide `HIDDEN_WARNINGS` and `HIDDEN_LOG_LINES`; keep every other warning and log line.

    Call it inside `warnings.catch_warnings()` to limit the warning filters to one run; the log
    filters stay installed (once per logger).
    """
    for message in HIDDEN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name, fragments in HIDDEN_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(fragments))


class DropMessages(logging.Filter):
    """Drop the log records whose message contains one of `fragments`."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(re.escape(f) for f in fragments))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())

"""Unlearning baselines beside SFD, each a Lightning module with its own loss (one interface).

- `ESDModule`: ESD (Gandikota et al. 2023), class-conditional (null class) and prompt forms;
- `SalUnModule`: SalUn (Fan et al. 2024), saliency-masked fine-tuning on the teacher's own samples
  (data-free);
- Retrain is the teacher's own recipe on the remain classes (`sfd.apps.teachers.pixel`), and
  distillation without forgetting / two-stage SFD are `SFDModule` runs (`sfd.core`).

After `Trainer.fit`, `unlearned(module)` gives the network to evaluate: a one-step generator, or
a denoiser to sample with the teacher's multi-step sampler.

A new baseline is one file here (a `ForgettingMethod` module with a static `check_settings`)
plus one entry in `BASELINES` and its key in `sfd.apps.compare.choices.BASELINE_KEYS` (the
torch-free list `sfd compare --help` reads; a test checks the two agree); `sfd compare` takes its
settings and runs it from there.
"""

from lightning.pytorch import LightningModule

from sfd.baselines.esd import ESDModule, esd_loss, esd_target
from sfd.baselines.method import ForgettingMethod, Unlearned, unlearned
from sfd.baselines.salun import SalUnModule, saliency_mask
from sfd.baselines.sampling import sample_pool

# Method key (`sfd compare --methods`, `--KEY.setting`) -> its Lightning module.
BASELINES: dict[str, type[LightningModule]] = {"esd": ESDModule, "salun": SalUnModule}


__all__ = [
    "BASELINES",
    "ESDModule",
    "ForgettingMethod",
    "SalUnModule",
    "Unlearned",
    "esd_loss",
    "esd_target",
    "saliency_mask",
    "sample_pool",
    "unlearned",
]

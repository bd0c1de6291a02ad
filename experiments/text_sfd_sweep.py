"""Try SFD / distillation settings of the text demo on the teacher and classifier of one run.

    python experiments/text_sfd_sweep.py --demo runs/demo-text --threads 1 --stage distill \
        --eval-every 150 --save-stage1 runs/text-stage1 \
        "base:trainer.max_steps=900" \
        "fake2x:trainer.max_steps=900,model.fake_optimizer.init_args.lr=6e-4"
    python experiments/text_sfd_sweep.py --demo runs/demo-text --threads 1 \
        --stage two_stage --stage1 runs/text-stage1/base "s2:trainer.max_steps=150"

`--demo` is a finished `sfd demo-text` report folder: its metrics.json names the data set, the
concept pair, the (cached) teacher and classifier folders and the teacher's remain FID. Each
argument is `name:key=value,...` over that data set's packaged text preset (keys as in
`sfd fit`). `--stage distill` is the demo's stage 1 (the preset plus sfd_text_<data>_stage1.yaml,
every class's captions, both forget weights 0), `sfd` runs SFD from the teacher,
`two_stage` runs SFD from a stage-1 generator and fake score saved by an earlier
`--save-stage1` run (the teacher stays the original). The evaluation is the demo's (`sfd
eval-text`'s metrics, same prompts, sample counts and seed), on the in-memory generator; with
`--eval-every N` it runs every N iterations too. Prints one line per evaluation and run and
appends one JSON line per run to --results, with its command and run context (date, commit,
load average at the start and the end). `--page-from FILE.jsonl ...` writes
docs/results/one_step_quality.md from such files (either sweep's) and measures nothing:

    python experiments/text_sfd_sweep.py --page-from runs/text_sweep.jsonl runs/digits_sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sweep_tools import QualityTrace, add_sweep_options, parse, parse_sweep_options, sweep_row

from sfd.apps.data.captions import load_captioned
from sfd.apps.data.images import train_heldout_split
from sfd.apps.demo_text.prompts import shipped_paraphrases, write_prompt_sets
from sfd.apps.demo_text.run import TextDemoSettings
from sfd.apps.harness.stages import StageOne, save_stage_one, train_sfd
from sfd.apps.harness.text_evaluation import ConceptProtocol, evaluate_model
from sfd.apps.harness.text_folders import teacher_vae
from sfd.eval.classifier import load_classifier
from sfd.eval.text_models import PromptEncoder, one_step_text_model, vae_decoder
from sfd.teachers.stable_diffusion import load_text_encoder
from sfd.training.cli import parse_fit_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="text_sfd_sweep.py", description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="an sfd demo-text report folder")
    parser.add_argument("--results", type=Path, default=Path("text_sweep.jsonl"))
    add_sweep_options(parser)
    options = parse_sweep_options(parser, argv, measuring_needs=("demo",))
    if options is None:  # --page-from: the page is written
        return

    metrics = json.loads((options.demo / "metrics.json").read_text())
    protocol_entry = metrics["protocol"]
    data_name, seed = protocol_entry["data"], protocol_entry["seed"]
    forget, override = metrics["forget"], metrics["override"]
    teacher_dir = protocol_entry["teacher"]["folder"]
    teacher_fid = metrics["teacher"]["fid_remain"]
    data, vocabulary = load_captioned(data_name)
    _, heldout = train_heldout_split(data, 0.2, seed)
    real_remain = heldout.images[heldout.labels != forget]
    classifier = load_classifier(protocol_entry["classifier"]["folder"])
    prompts = write_prompt_sets(
        vocabulary,
        forget,
        override,
        shipped_paraphrases(data_name),
        Path(tempfile.mkdtemp(prefix="sfd-text-sweep-")),
    )
    protocol = ConceptProtocol(
        forget_train=prompts.forget_train,
        remain=prompts.remain,
        forget=forget,
        override=override,
        neighbours=protocol_entry["neighbours"],
        num_classes=vocabulary.num_classes,
        forget_paraphrases=prompts.forget_paraphrases,
        forget_images=protocol_entry["forget_images_per_set"],
        remain_per_class=protocol_entry["remain_images_per_class"],
        seed=seed,
    )
    encoder = PromptEncoder(*load_text_encoder(teacher_dir))
    decode = vae_decoder(teacher_vae(teacher_dir))

    def quality(network: Any) -> dict[str, float]:
        model = one_step_text_model(network, encoder, decode, 1.0, "one-step generator")
        result = evaluate_model(model, classifier, protocol, real_remain)
        paraphrases = result.forget_paraphrases
        return {
            "ua": round(result.ua, 4),
            "ua_paraphrases": round(paraphrases.ua, 4) if paraphrases else float("nan"),
            "remain_accuracy": round(result.remain_accuracy, 4),
            "neighbour_accuracy": round(result.neighbour_accuracy or 0.0, 4),
            "fid_remain": round(result.fid_remain, 3),
            "fid_ratio": round(result.fid_remain / teacher_fid, 3),
        }

    print(f"teacher (from {options.demo}): FID {teacher_fid:.3f}", flush=True)
    for spec in options.configs:
        name, sfd_args = parse(spec)
        settings = TextDemoSettings(data=data_name, sfd_args=sfd_args, seed=seed, progress=False)
        stage = "stage1" if options.stage == "distill" else "sfd"
        args = settings.sfd_command_line(teacher_dir, prompts, stage)
        if options.stage == "two_stage":
            args += StageOne.load(options.stage1).stage_two_arguments()
        iterations = parse_fit_config(args, one_line_errors=True).trainer.max_steps
        trace = QualityTrace(options.eval_every or iterations, quality, options.extra_ema)
        load_start = os.getloadavg()
        start = time.perf_counter()
        module, seconds, _ = train_sfd(
            args, [trace], Path("/tmp/sfd-text-sweep-logs") / name, False, seed
        )
        wall = time.perf_counter() - start
        if options.save_stage1 is not None and options.stage == "distill":
            folder = options.save_stage1 / name
            folder.mkdir(parents=True, exist_ok=True)
            save_stage_one(module, folder, seconds, iterations)
        last = trace.points[-1]["ema"]
        row = sweep_row(
            __file__,
            options.argv,
            spec,
            load_start,
            name=name,
            demo=str(options.demo),
            stage=options.stage,
            stage1=str(options.stage1) if options.stage1 else None,
            settings={"iterations": iterations, "model": parse_fit_config(args).model.as_dict()},
            **last,
            teacher_fid=teacher_fid,
            train_seconds=seconds - trace.seconds,
            train_seconds_with_evaluations=seconds,
            wall_seconds=wall,
            threads=torch.get_num_threads(),
            quality_trace=trace.points,
        )
        print(
            f"{name}: {last} wall {wall:.0f} s load {load_start[0]:.1f}->{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        with options.results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

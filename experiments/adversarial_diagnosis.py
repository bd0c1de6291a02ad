"""Does adversarial SFD's inner attack find what the evaluation attacker finds? A diagnosis on a text
demo's plain-SFD generator (docs/method.md §9).

Draws the inner attack's rows (forget prompts with 16 random vocabulary tokens inserted, as
`AdversarialTraining` does) and runs Adam on the learned tokens of the *fixed* generator, with one
of four objectives:

- `inner`: the inner attack's own, data-free objective (`AdversarialTraining.objective` at the
  default settings: the teacher as a diffusion classifier over the forget prompt, its override and
  `rivals` remain prompts, log p(forget | x));
- `margin`: the same at `rivals` 0, the first version's objective (the implicit-classifier margin,
  forget prompt against its override only);
- `concepts`: a data-free variant for comparison, the teacher as a diffusion classifier over every
  concept (the row's forget prompt and the first remain prompt of each remain class), log-softmax
  of −e(x, c) towards the forget prompt;
- `classifier`: the evaluation attack's objective (cross-entropy of the evaluation classifier
  towards the forgotten class, `samples` draws per step) — for reference only, never in training.

Every `every` steps it reports, on fixed held-out noise (16 draws per row), the share of samples the
evaluation classifier labels as the forgotten class, the share the teacher's judge (§8) reads as
forget (forget prompt against its override), the share it reads as forget against every rival
(as the completion rule reads the pool), and the classifier's label counts.

    python experiments/adversarial_diagnosis.py --run runs/adv/digits-plain \
        --teacher /tmp/benchcache/sfd/text-teacher-90c1820040c67763 --steps 50 \
        --objectives inner margin classifier

`--family sd3` reads a flow-teacher run (`sfd demo-text --family sd3`); its page is
docs/results/flow_adversarial_diagnosis.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from results_page import add_page_arguments, markdown_table, measure_and_write, write_page

OBJECTIVES = ("inner", "margin", "concepts", "classifier")
SETTINGS = ("run", "teacher", "data", "family", "steps", "every", "rows", "samples", "scale")


def measure(options: argparse.Namespace) -> dict[str, Any]:
    import json
    from dataclasses import replace

    import torch

    from sfd.apps.data.captions import load_captioned
    from sfd.apps.demo_text.settings import TextDemoSettings
    from sfd.apps.harness.stages import GENERATOR_CLASS
    from sfd.core.adversarial import MOMENT_KEYS, concatenated
    from sfd.core.judge import DEFAULT_SIGMAS, JudgeDraws, judged_forget, judged_forget_among
    from sfd.eval.classifier import load_classifier
    from sfd.training.cli import build_from_fit_config

    if options.family == "sd3":
        from sfd.apps.teachers.flow_text import quiet_clip_truncation

        quiet_clip_truncation()  # the flow text teacher's zero CLIP slots truncate by design
    run = Path(options.run)
    metrics = json.loads((run / "metrics.json").read_text())
    forget, num_classes = int(metrics["forget"]), int(metrics["num_classes"])
    override = int(metrics["override"])
    settings = TextDemoSettings(data=options.data, adversarial=True, family=options.family)
    init = "--model.conditions.init_args."
    args = settings.sfd_command_line(options.teacher) + [
        f"{init}forget_prompts", str(run / "prompts" / "forget_prompts.txt"),
        f"{init}remain_prompts", str(run / "prompts" / "remain_prompts.txt"),
        "--model.generator", GENERATOR_CLASS,
        "--model.generator.init_args.pretrained_model_name_or_path", str(run / "generator"),
    ]  # fmt: skip
    concepts = load_captioned(options.data)[1].concept_pairs(forget, override)
    args += [f"{init}concepts", json.dumps(concepts)]
    module, _ = build_from_fit_config(args)
    module.eval()
    adversarial, teacher = module.adversarial, module.teacher
    inner_settings = adversarial.settings
    rivals_setting = inner_settings.rivals
    classifier = load_classifier(run / "classifier").eval().requires_grad_(False)
    remain_labels = [int(line.rsplit(",", 1)[1]) for line in
                     (run / "prompts" / "remain_prompts.csv").read_text().splitlines()[1:]]  # fmt: skip
    firsts = [remain_labels.index(k) for k in sorted(set(remain_labels))]  # one prompt per class
    rows, shape = options.rows, tuple(teacher.sample_shape)
    held_out = torch.randn((16 * rows, *shape), generator=torch.Generator().manual_seed(999))
    draws = JudgeDraws.draw(module.conditions, shape, 16 * rows, DEFAULT_SIGMAS, 2, 0)

    @torch.no_grad()
    def read(state: dict, learned: torch.Tensor) -> dict[str, Any]:
        attacked, plain, override = adversarial.space.conditions(state, learned)
        x = module.generator(held_out, concatenated([attacked] * 16))
        labels = classifier(x.float()).argmax(1)
        judged = judged_forget(
            teacher, x, concatenated([plain] * 16), concatenated([override] * 16), draws
        )
        rivals = adversarial.space.rivals(state, rivals_setting, None)  # the rule's fixed ones
        among = judged_forget_among(
            teacher, x, concatenated([plain] * 16), [concatenated([r] * 16) for r in rivals], draws
        )
        return {
            "classifier_forget": float((labels == forget).float().mean()),
            "judged_forget": float(judged.float().mean()),
            "judged_forget_among": float(among.float().mean()),
            "labels": torch.bincount(labels, minlength=num_classes).tolist(),
        }

    def concept_objective(state: dict, learned: torch.Tensor, rng: torch.Generator):
        attacked, plain, _ = adversarial.space.conditions(state, learned)
        z = torch.cat([module._randn(rng, rows) for _ in range(options.samples)])
        x_g = module.generator(z, concatenated([attacked] * options.samples))
        n = len(x_g)
        conds = [concatenated([plain] * options.samples)] + [
            module.conditions.remain_conditions(torch.full((n,), i)) for i in firsts
        ]
        errors = torch.zeros(len(conds), n)
        for level in DEFAULT_SIGMAS:
            noisy = (x_g + level * torch.randn(x_g.shape, generator=rng)).repeat(
                len(conds), 1, 1, 1
            )
            sigma = torch.full((len(noisy),), level)
            x0 = teacher(noisy, sigma, concatenated(conds)).view(len(conds), n, *shape)
            errors += (x0 - x_g).square().flatten(2).mean(2) / level**2 / len(DEFAULT_SIGMAS)
        # log p(c_f | x) of the diffusion classifier (−e as a log-likelihood, up to scale)
        return torch.log_softmax(-options.scale * errors, dim=0)[0].view(-1, rows).mean(0)

    def classifier_objective(state: dict, learned: torch.Tensor, rng: torch.Generator):
        attacked, _, _ = adversarial.space.conditions(state, learned)
        z = torch.cat([module._randn(rng, rows) for _ in range(options.samples)])
        x = module.generator(z, concatenated([attacked] * options.samples))
        target = torch.full((len(x),), forget)
        loss = torch.nn.functional.cross_entropy(classifier(x.float()), target, reduction="none")
        return -loss.view(-1, rows).mean(0)

    results = {}
    for name in options.objectives:
        state = adversarial.space.draw(rows, torch.Generator().manual_seed(123), module.generator)
        learned = state[adversarial.space.learned].clone()
        moments = dict(zip(MOMENT_KEYS, (torch.zeros_like(learned), torch.zeros_like(learned),
                                         torch.zeros(rows)), strict=True))  # fmt: skip
        points = [{"step": 0, **read(state, learned)}]
        for step in range(options.steps):
            rng = torch.Generator().manual_seed(1000 + step)
            learned.requires_grad_(True)
            if name in ("inner", "margin"):
                rivals = inner_settings.rivals if name == "inner" else 0
                adversarial.settings = replace(inner_settings, rivals=rivals)
                objective = adversarial.objective(module, state, learned, rng)
                adversarial.settings = inner_settings
            elif name == "concepts":
                objective = concept_objective(state, learned, rng)
            else:
                objective = classifier_objective(state, learned, rng)
            (grad,) = torch.autograd.grad(objective.sum(), [learned])
            learned = adversarial._ascend(learned.detach(), grad, moments)
            if (step + 1) % options.every == 0:
                point = {"step": step + 1, "objective": float(objective.mean()),
                         **read(state, learned)}  # fmt: skip
                print(name, point, flush=True)
                points.append(point)
        results[name] = points
    return {
        "settings": {key: getattr(options, key) for key in SETTINGS},
        "forget": forget,
        "class_names": metrics.get("class_names"),
        "adversarial": adversarial.settings.as_dict(),
        "objectives": results,
    }


def summary(record: dict[str, Any]) -> str:
    return "\n".join(
        f"{name}: classifier {points[-1]['classifier_forget']:.3f}, "
        f"judged {points[-1]['judged_forget']:.3f} after {points[-1]['step']} steps"
        for name, points in record["objectives"].items()
    )


def write_results_page(record: dict[str, Any], json_file: str) -> str:
    names = record.get("class_names") or [str(k) for k in range(10)]
    table = []
    for name, points in record["objectives"].items():
        for p in points:
            counts = ", ".join(f"{names[k]} {c}" for k, c in enumerate(p["labels"]) if c)
            objective = "–" if "objective" not in p else f"{p['objective']:.4f}"
            among = p.get("judged_forget_among")
            among = "–" if among is None else f"{100 * among:.1f} %"
            table.append((name, p["step"], objective, f"{100 * p['classifier_forget']:.1f} %",
                          f"{100 * p['judged_forget']:.1f} %", among, counts))  # fmt: skip
    s = record["settings"]
    sections = {
        "What it measures": (
            f"{s['rows']} rows of the inner attack (forget prompts with "
            f"{record['adversarial']['tokens']} random vocabulary tokens inserted), Adam "
            f"(lr {record['adversarial']['lr']}) on their tokens against the fixed plain-SFD "
            f"generator of `{s['run']}`, {s['steps']} steps per objective; read on 16 held-out "
            "draws per row: the evaluation classifier's share of the forgotten class, the "
            "teacher judge's (§8) share judged forget (forget prompt against its override), its "
            "share judged forget against every rival (as the completion rule reads the pool, "
            "§8), and the classifier's label counts. "
            + " ".join(
                {
                    "inner": "`inner`: the inner attack's objective at its settings "
                    f"({record['adversarial']}).",
                    "margin": "`margin`: the same at `rivals` 0, the forget prompt against "
                    "its override only (the first version's objective).",
                    "concepts": "`concepts`: the teacher as a diffusion classifier over every "
                    f"concept (scale {s['scale']}, {s['samples']} z per row).",
                    "classifier": "`classifier`: the evaluation attack's objective "
                    f"({s['samples']} z per row), for reference only.",
                }[name]
                for name in record["objectives"]
            )
        ),
        "Results": markdown_table(
            (
                "objective",
                "step",
                "objective value",
                "classifier: forgotten class",
                "judge: forget",
                "judge: forget among all",
                "classifier labels",
            ),
            table,
        ),  # fmt: skip
    }
    flow = s.get("family", "unet") == "sd3"  # the flow teacher's diagnosis has its own page
    return str(
        write_page(
            "flow_adversarial_diagnosis" if flow else "adversarial_diagnosis",
            "Adversarial SFD: what the inner attack finds"
            + (" on the flow-matching teacher" if flow else ""),
            record["run"]["command"],
            json_file,
            record,
            sections,
        )
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an sfd demo-text output folder (plain SFD)")
    parser.add_argument("--teacher", help="the run's text-teacher folder (in its teacher cache)")
    parser.add_argument("--data", default="digits", help="the run's data set")
    parser.add_argument(
        "--family", default="unet", choices=("unet", "sd3"), help="the run's teacher family"
    )
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8, help="z per row (concepts, classifier)")
    parser.add_argument("--scale", type=float, default=100.0, help="concepts: softmax scale")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="runs/attacks/adversarial_diagnosis.json")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if not options.page_from and not (options.run and options.teacher):
        parser.error("give --run and --teacher (or --page-from)")
    measure_and_write(
        options, argv, __file__, lambda: measure(options), summary, write_results_page
    )


if __name__ == "__main__":
    main()

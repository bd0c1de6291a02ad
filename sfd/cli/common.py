"""What several verbs share (not a verb itself): the torch device a user names, quiet training,
the options of the class-conditional runs (`sfd demo`, `sfd compare`)."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from sfd.errors import SFDConfigError
from sfd.training.config_files import attach_signed_values

FIT_PREFIXES = ("--model.", "--trainer.")  # options the demos forward to the SFD configuration


class OneLineParser(argparse.ArgumentParser):
    """The argparse parser of sfd's verbs: a mistake argparse finds itself (a value of the wrong
    type, an unknown choice, a missing argument) is one `sfd: error:` line naming the option and
    the value, exit status 2 (`SFDConfigError`), like every other refusal, not a usage block."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # `--seed -inf` as `--seed=-inf`: argparse names the value then, not "expected one argument"
        attached = attach_signed_values(list(args)) if args is not None else None
        return super().parse_known_args(attached, namespace)

    def error(self, message: str) -> NoReturn:
        raise SFDConfigError(f"{message} (`{self.prog} --help` lists the options)")


def is_option(token: str) -> bool:
    """An option name, not a value such as -1 or -.5."""
    if not token.startswith("-"):
        return False
    try:
        float(token)
    except ValueError:
        return True
    return False


def given_options(
    parser: argparse.ArgumentParser, args: list[str], dests: Iterable[str]
) -> set[str]:
    """Which of the options `dests` (argparse destinations) `args` names, defaults included.

    `args` is parsed again into a namespace that holds a marker for each of `dests`: argparse
    fills in a default only where the namespace has none, so a marker left means not given
    (`--flag=value` and abbreviations count as given).
    """
    unset = object()
    wanted = set(dests)
    parsed, _ = parser.parse_known_args(args, argparse.Namespace(**dict.fromkeys(wanted, unset)))
    return {dest for dest in wanted if getattr(parsed, dest) is not unset}


def refuse_unread(
    parser: argparse.ArgumentParser,
    args: list[str],
    options: argparse.Namespace,
    dests: Iterable[str],
    needs: str,
    instead: str,
) -> None:
    """Refuse the first option of `dests` that `args` gives: nothing would read it, and a
    setting silently unused is a wrong result.

    Args:
        parser: the command's parser (for the option names).
        args: its command line.
        options: what `parser` made of it (for the value in the message).
        dests: argparse destinations; the first given one is named.
        needs: what would read them, e.g. "with --attack".
        instead: the other way out, e.g. "give --attack".
    """
    dests = list(dests)
    given = given_options(parser, args, dests)
    for dest in (d for d in dests if d in given):
        action = next(a for a in parser._actions if a.dest == dest)
        flag = next((o for o in action.option_strings if o.startswith("--")), dest)
        value = getattr(options, dest)
        shown = value if isinstance(value, (int, float)) else repr(str(value))
        raise SFDConfigError(f"{flag} {shown} is read only {needs}; {instead} or leave {flag} out")


def check_attack_suite_options(
    parser: argparse.ArgumentParser,
    args: list[str],
    options: argparse.Namespace,
    attacking: bool,
    needs: str = "with --attack",
    instead: str = "give --attack",
) -> None:
    """Refuse the attack-suite options of a command line that nothing would read: an attack's
    options (--attack-*, --attacker-classifier, --cache) without an attack, the revival test's
    (--revival-*) without --revival, and --cache unless an attacker classifier is trained.

    Args:
        parser: the command's parser; its options named attack_* / revival_* are checked.
        args: its command line.
        options: what `parser` made of it.
        attacking: whether the command runs an attack.
        needs: what runs one (for the message), e.g. "with --attack".
        instead: how to turn one on, e.g. "give --attack".
    """
    from sfd.eval.attack_budget import attack_objectives  # no torch

    dests = [a.dest for a in parser._actions]
    # --cache is the attacker classifier's where the command takes --attacker-classifier (the
    # demos' --cache is their own)
    transfer = "attacker_classifier" in dests
    first = ["attacker_classifier", "cache"] if transfer else []
    if not attacking:
        attack = first + [d for d in dests if d.startswith("attack_")]
        refuse_unread(parser, args, options, attack, needs, instead)
    if "revival" in dests and options.revival is None:
        revival = [d for d in dests if d.startswith("revival_")]
        refuse_unread(parser, args, options, revival, "with --revival", "give --revival STEPS")
    if attacking and transfer:
        if "transfer" not in attack_objectives(options.attack_objective):
            refuse_unread(parser, args, options, ["cache"], "by a transfer attack's trained "
                          "attacker classifier", "give --attack-objective transfer or both")  # fmt: skip
        elif options.attacker_classifier is not None:
            refuse_unread(parser, args, options, ["cache"], "when the attacker classifier is "
                          "trained", "give no --attacker-classifier")  # fmt: skip


def usable_device(name: str, flag: str = "--device") -> Any:
    """The `torch.device` called `name`, if this machine can allocate on it.

    Args:
        name: e.g. "cpu", "cuda", "cuda:1", "mps".
        flag: the option that named it, for the message.

    Returns:
        the device.
    """
    import torch

    try:
        device = torch.device(name)
        torch.empty(0, device=device)  # "cuda" parses on a machine without CUDA; this does not
    except (RuntimeError, AssertionError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SFDConfigError(
            f"{flag} {name!r} is not a usable torch device here ({reason}); e.g. cpu, cuda, cuda:1"
        ) from error
    return device


@contextmanager
def run_quietly(progress: bool = True) -> Iterator[None]:
    """Within: Lightning's warnings about choices sfd makes on purpose are hidden (as in `sfd fit`);
    with `progress=False` also the bars transformers and diffusers draw when they load or save
    weights, so `--no-progress` output is the run's own lines only."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from sfd.training.progress import quiet_design_warnings

    libraries = [transformers_logging, diffusers_logging]
    shown = [library.is_progress_bar_enabled() for library in libraries]
    with warnings.catch_warnings():
        quiet_design_warnings()
        if not progress:
            for library in libraries:
                library.disable_progress_bar()
        try:
            yield
        finally:
            for library, was in zip(libraries, shown, strict=True):
                if was:
                    library.enable_progress_bar()


def add_class_run_options(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """The options `sfd demo` and `sfd compare` share (teacher, classifier, stage 1, protocol).

    Args:
        parser: the verb's parser.
        defaults: its settings dataclass instance (`ClassRunSettings` or a subclass), for defaults.
    """
    add = parser.add_argument
    add("--data", default=defaults.data, help="'digits' (default) or a labelled .npz / CIFAR-10")
    add(
        "--forget",
        default=defaults.forget,
        help="class to forget, by index or name (digits: zero..nine)",
    )
    add("--override", default=defaults.override, help="class it is mapped to, by index or name")
    add("--seed", type=int, default=defaults.seed, help="seed of every phase")
    add("--sfd-config", type=Path, help="SFD settings in `sfd fit` YAML (default: the preset)")
    add("--teacher-cache", type=Path, help="cache of teachers, classifiers, stage 1 (~/.cache/sfd)")
    add("--teacher-steps", type=int, help="teacher (and Retrain) training steps")
    add("--teacher-channels", type=int, nargs="+", help="teacher UNet block_out_channels")
    add(
        "--classifier-steps",
        type=int,
        help="classifier training steps (default: 40 passes over the training images within a compute cap, at least 800)",
    )
    add(
        "--stage1-steps",
        "--baseline-iterations",
        dest="baseline_iterations",
        type=int,
        help="stage-1 (distillation without forgetting) iterations; default: the stage-1 "
        "preset's (600), or --trainer.max_steps, which sets both stages",
    )
    add(
        "--curve-every",
        type=int,
        help="forgetting-curve interval (default: iterations/20; SFD under --until-forgotten: "
        "the rule's probe interval, 10, which must not exceed --trainer.max_steps)",
    )
    add(
        "--until-forgotten",
        action=argparse.BooleanOptionalAction,
        default=defaults.until_forgotten,
        help="SFD (stage 2) stops once the data-free judge finds the forget class gone "
        "(sfd.training.completion.UntilForgotten, probing at the curve interval), within "
        "stage 2's cap of iterations (its preset: 600); the classifier's UA is logged beside the "
        "judge's (default: on; --no-until-forgotten runs the whole cap)",
    )
    add_average_after_option(parser, defaults.average_after, "class")
    add(
        "--override-floor",
        action=argparse.BooleanOptionalAction,
        default=defaults.override_floor,
        help="with --until-forgotten: a probe counts as forgotten when the judge reads the forget "
        "samples as the forget class at most the rule's threshold (0.01) more often than the "
        "generator's own override samples on the same noise, where the teacher itself confuses "
        "the pair (docs/method.md §8; default: on; --no-override-floor: the bare threshold)",
    )
    add(
        "--curve-per-class",
        type=int,
        default=defaults.curve_per_class,
        help="forget-class samples per forgetting-curve point",
    )
    add(
        "--curve-remain-per-class",
        type=int,
        default=defaults.curve_remain_per_class,
        help="samples of each remain class per forgetting-curve point",
    )
    add("--eval-per-class", type=int, default=defaults.eval_per_class, help="generated per class")
    add(
        "--ddim-steps",
        type=int,
        default=defaults.ddim_steps,
        help="DDIM steps of multi-step models",
    )
    add("--throughput-batch", type=int, default=defaults.throughput_batch)
    add("--throughput-repeats", type=int, default=defaults.throughput_repeats)
    add("--grid-per-class", type=int, default=defaults.grid_per_class)
    add(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy shared machine)",
    )
    add("--no-progress", action="store_true", help="hide progress bars")


def add_average_after_option(parser: argparse.ArgumentParser, default: int, concept: str) -> None:
    """`--average-after`, the completion rule's "EMA after forgetting" (`sfd demo`, `sfd compare`,
    `sfd demo-text`; `concept`: what is forgotten, for the help)."""
    parser.add_argument(
        "--average-after",
        type=int,
        default=default,
        help=f"EMA after forgetting (with --until-forgotten): once the judge first finds the "
        f"forget {concept} gone, the shipped generator restarts as the plain mean of the generator "
        "iterates from there, and the completion rule stops only once it averages at least this "
        "many iterations (and one curve interval), within --trainer.max_steps; docs/method.md §4 "
        "(default: %(default)s; 0: off, the EMA keeps its schedule)",
    )


def add_objective_option(parser: argparse.ArgumentParser) -> None:
    """--attack-objective, shared by every command that attacks (`OBJECTIVE_CHOICES`)."""
    from sfd.eval.attack_budget import OBJECTIVE_CHOICES

    parser.add_argument(
        "--attack-objective",
        default="white-box",
        metavar="|".join(OBJECTIVE_CHOICES),
        help="the classifier the attacks' objective differentiates: the evaluation classifier "
        "that judges them (white-box, default), an attacker classifier of the same recipe and "
        "another seed (transfer, the key NAME-transfer), or both; with the attacker classifier "
        "each result also reports its agreement with the judge",
    )


def add_class_attack_options(parser: argparse.ArgumentParser) -> None:
    """The class-embedding attack's budget options (`sfd eval --attack`, `sfd demo`)."""
    from sfd.eval.attack_budget import ClassEmbeddingBudget

    budget = ClassEmbeddingBudget()
    add = parser.add_argument
    add_objective_option(parser)
    add("--attack-steps", type=int, help=f"Adam steps per restart (default {budget.steps})")
    add("--attack-restarts", type=int, help=f"restarts (default {budget.restarts})")
    add("--attack-lr", type=float, help=f"Adam learning rate (default {budget.lr})")
    add("--attack-batch", type=int, help=f"noise per step (default {budget.batch_size})")
    add("--attack-eval-samples", type=int, help=f"held-out samples (default {budget.eval_samples})")
    add("--attack-ddim-steps", type=int, default=4, help="a teacher's sampler in the attack")


def class_embedding_budget(options: argparse.Namespace, seed: int) -> Any:
    """The class-embedding attack's budget from `add_class_attack_options` (checked here)."""
    from sfd.eval.attack_budget import ClassEmbeddingBudget, attack_objectives

    attack_objectives(options.attack_objective)
    if options.attack_ddim_steps < 1:
        raise SFDConfigError(f"--attack-ddim-steps={options.attack_ddim_steps} must be at least 1")
    given = {
        "steps": options.attack_steps,
        "restarts": options.attack_restarts,
        "lr": options.attack_lr,
        "batch_size": options.attack_batch,
        "eval_samples": options.attack_eval_samples,
    }
    return ClassEmbeddingBudget(**{k: v for k, v in given.items() if v is not None}, seed=seed)


def add_revival_options(parser: argparse.ArgumentParser) -> None:
    """The revival test's options, `--revival STEPS` and its budget (`sfd eval`, `sfd eval-text`,
    `sfd demo`, `sfd demo-text`); `revival_budget` reads them."""
    from sfd.eval.attack_budget import RevivalBudget  # no torch

    budget = RevivalBudget()
    add = parser.add_argument
    add("--revival", type=int, metavar="STEPS", help="revival test: fine-tune a copy of the "
        "model (the demos: of each model) on real images of the forgotten class for STEPS steps; "
        "UA after 0, STEPS/4, STEPS/2, STEPS (default: no revival test)")  # fmt: skip
    add("--revival-images", type=int, default=budget.images,
        help="k real held-out images of the forgotten class (default %(default)s)")  # fmt: skip
    add("--revival-lr", type=float, default=budget.lr,
        help="revival Adam learning rate (default %(default)s)")  # fmt: skip
    add("--revival-batch", type=int, default=budget.batch_size,
        help="revival images per step (default %(default)s)")  # fmt: skip


def revival_budget(options: argparse.Namespace, seed: int) -> Any:
    """The revival budget of `add_revival_options` (None without --revival; its values checked by
    `RevivalBudget`: a negative or zero count, a learning rate outside (0, inf), one line)."""
    from sfd.eval.attack_budget import RevivalBudget

    if options.revival is None:
        return None
    return RevivalBudget(
        steps=options.revival,
        images=options.revival_images,
        lr=options.revival_lr,
        batch_size=options.revival_batch,
        seed=seed,
    )

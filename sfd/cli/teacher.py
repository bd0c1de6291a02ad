"""`sfd teacher`: train a class-conditional DDPM teacher (LightningCLI, see `teacher_cli`).

Config files are checked before Lightning is imported. `sfd teacher --help` answers without
importing torch: it reads the options of the model and the data from the source of
`sfd.apps.teachers.pixel` (their signatures and docstrings, so it cannot drift from them);
`--help-all` prints LightningCLI's full page (every Trainer argument; imports Lightning).
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path
from typing import Any

from sfd.cli.teacher_defaults import (
    DEFAULT_MAX_STEPS,
    DEFAULT_OUTPUT_DIR,
    OUTPUT_DIR_HELP,
    OVERWRITE_HELP,
)

SOURCE = Path(__file__).resolve().parents[1] / "apps" / "teachers" / "pixel.py"
GROUPS = {"model": "DDPMTeacherModule", "data": "TeacherDataModule"}
LINKED = {"num_classes", "image_shape"}  # set from the data by `sfd teacher`, not options


def run(args: list[str]) -> None:
    """Train a class-conditional DDPM teacher and write its diffusers folder."""
    if "--help-all" in args:
        args = ["--help"]
    elif "-h" in args or "--help" in args:
        print(teacher_help())
        return
    from sfd.training.config_files import check_config_files

    check_config_files(args)
    from sfd.cli.teacher_cli import teacher_lightning_cli

    teacher_lightning_cli(["fit", *args])


def teacher_options() -> dict[str, list[tuple[str, Any, str]]]:
    """The `--model.*` and `--data.*` options: group -> [(name, default, description)], read
    from the classes' `__init__` signatures and docstring "Args:" in their source (no import)."""
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    constants = _module_constants(tree)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    options = {}
    for group, class_name in GROUPS.items():
        node = classes[class_name]
        described = _docstring_args(ast.get_docstring(node) or "")
        [init] = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
        arguments = init.args.args[1:]  # no self
        defaults = [None] * (len(arguments) - len(init.args.defaults)) + init.args.defaults
        options[group] = [
            (arg.arg, _value(default, constants), described.get(arg.arg, ""))
            for arg, default in zip(arguments, defaults, strict=True)
            if arg.arg not in LINKED
        ]
    return options


def teacher_help() -> str:
    """The text of `sfd teacher --help`."""

    def rows(pairs: list[tuple[str, str]]) -> list[str]:  # argparse's layout, 100 columns
        lines = []
        for name, text in pairs:
            wrapped = textwrap.wrap(text, 100 - 32) or [""]
            if len(name) < 30:
                lines.append(f"  {name:<30}{wrapped.pop(0)}")
            else:  # a long name gets a line of its own
                lines.append(f"  {name}")
            lines += [" " * 32 + line for line in wrapped]
        return lines

    lines = [
        "usage: sfd teacher [-c CONFIG.yaml ...] [--output_dir DIR] [--overwrite] "
        "[--model.NAME VALUE ...] [--data.NAME VALUE ...] [--trainer.NAME VALUE ...] "
        "[--ckpt_path CKPT]",
        "",
        "Train a class-conditional DDPM teacher on labelled images and write its diffusers folder "
        "(the `pretrained_model_name_or_path` of `sfd fit`). A LightningCLI: later options "
        "override earlier ones and the config files, e.g. "
        "`sfd teacher -c configs/teacher_digits.yaml --trainer.max_steps 500`.",
        "",
        "options:",
        *rows(
            [
                ("-h, --help", "show this help and exit"),
                (
                    "--help-all",
                    "LightningCLI's full help: every Trainer argument (imports Lightning)",
                ),
                ("-c, --config CONFIG", "a YAML configuration; repeat to layer several"),
                ("--print_config", "print the resolved configuration and exit"),
                ("--output_dir DIR", f"{OUTPUT_DIR_HELP} (default: {DEFAULT_OUTPUT_DIR})"),
                ("--overwrite", OVERWRITE_HELP),
                ("--seed_everything SEED", "seed of the weights, batches and noise (default: 0)"),
                ("--ckpt_path CKPT", "resume from a checkpoint file, or `last` (the newest)"),
            ]
        ),
    ]
    for group, options in teacher_options().items():
        lines += ["", f"{group} ({GROUPS[group]}):"]
        lines += rows(
            [(f"--{group}.{name}", _with_default(text, value)) for name, value, text in options]
        )
    lines += [
        "",
        "trainer (lightning.Trainer):",
        *rows(
            [
                (
                    "--trainer.NAME VALUE",
                    f"any Trainer argument, e.g. --trainer.max_steps (default: {DEFAULT_MAX_STEPS}), "
                    "--trainer.accelerator, --trainer.devices, --trainer.precision, "
                    "--trainer.default_root_dir (default: <output_dir>-training); "
                    "`sfd teacher --help-all` lists them all",
                )
            ]
        ),
    ]
    return "\n".join(lines)


def _docstring_args(docstring: str) -> dict[str, str]:
    """name -> description of a Google-style "Args:" section, joined onto one line."""
    section = docstring.split("Args:", 1)[-1] if "Args:" in docstring else ""
    found: dict[str, str] = {}
    name = None
    for line in textwrap.dedent(section).splitlines():
        match = re.match(r"^(\w+)( \(.*\))?: (.*)$", line)
        if match:
            name = match.group(1)
            found[name] = match.group(3).strip()
        elif name and line.strip():
            found[name] += " " + line.strip()
        elif not line.strip() and found:
            break
    return found


def _module_constants(tree: ast.Module, depth: int = 3) -> dict[str, Any]:
    """NAME -> value of the literal module-level constants of `tree`, and of those it imports
    by name from other sfd modules (read from their source too, following re-exports)."""
    constants = _literal_assignments(tree)
    root = SOURCE.parents[3]  # the folder holding the `sfd` package
    for node in tree.body:
        if depth and isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sfd."):
            path = root.joinpath(*node.module.split(".")).with_suffix(".py")
            if path.is_file():
                source = ast.parse(path.read_text(encoding="utf-8"))
                imported = _module_constants(source, depth - 1)
                for alias in node.names:
                    if alias.name in imported:
                        constants[alias.asname or alias.name] = imported[alias.name]
    return constants


def _literal_assignments(tree: ast.Module) -> dict[str, Any]:
    """NAME -> value of the module-level `NAME = <literal>` lines of `tree`."""
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and [type(t) for t in node.targets] == [ast.Name]:
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return constants


def _value(node: ast.expr | None, constants: dict[str, Any]) -> Any:
    """The value of a default: a literal, or a module constant by name."""
    if node is None:
        return None
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return ast.literal_eval(node)


def _with_default(text: str, value: Any) -> str:
    """A docstring description with the default after it (unless it already says one)."""
    text = text.rstrip(".")
    return text if "(default" in text else f"{text} (default: {_shown(value)})"


def _shown(value: Any) -> str:
    """A default as the YAML of a config file writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return str(list(value))
    return str(value)

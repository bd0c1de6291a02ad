"""The evaluation classifiers of the Fashion-MNIST pairs: held-out accuracy and the pair's confusion.

    python experiments/classifier_strength.py --cache /tmp/completion-cache/sfd [--threads 1] \
        [--json runs/classifier/classifier.json]
    python experiments/classifier_strength.py --page-from runs/classifier/classifier.json

For each data set the demos evaluate Fashion-MNIST pairs on — the 8×8 `.npz` of `sfd demo`
(`experiments/make_fashion_npz.py`, built when missing) and the 32×32 Fashion-MNIST of
`sfd demo-text` — it builds (or reuses from the demos' cache, `--cache`) the evaluation classifier
under each recipe: the old fixed 800 steps and the demos' default (`classifier_steps`: 40 passes
over the training images within a compute cap). On the demos' held-out split it reports the
classifier's accuracy and, per pair, the share of held-out real override images it reads as the
forget class (a generator drawing the override exactly gets UA 1 − that: the UA ceiling) and the
share of real forget images it reads as the override. Writes the record and
docs/results/classifier.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import make_fashion_npz
import torch
from results_page import add_page_arguments, markdown_table, measure_and_write, write_page

FASHION8 = Path("runs/fashion8.npz")  # as experiments/pairs_benchmark.py
HELDOUT_FRACTION, SEED = 0.2, 0  # the demos' defaults
# (data set, pairs (forget, override) as class indices); Fashion-MNIST's class names
NAMES = make_fashion_npz.CLASS_NAMES
PAIRS = {
    "fashion-mnist 8×8 (sfd demo)": [(7, 5)],
    "fashion-mnist 32×32 (sfd demo-text)": [(2, 4), (7, 5)],
}
RECIPES = {"800 steps (before)": {"seed": SEED, "max_steps": 800}, "demos' default": {"seed": SEED}}


def splits() -> dict[str, tuple[str, dict[str, Any], Any, Any]]:
    """{data set: (cache kind, split description, train, held-out)} as the demos build them."""
    from sfd.apps.data.captions import load_fashion_mnist
    from sfd.apps.data.images import train_heldout_split
    from sfd.apps.demo_text.run import data_source
    from sfd.apps.harness.cache import data_fingerprint
    from sfd.apps.harness.workspace import load_split

    if not FASHION8.is_file():
        print(make_fashion_npz.build(FASHION8), flush=True)
    small = load_split(str(FASHION8), HELDOUT_FRACTION, SEED, None)
    train, heldout = train_heldout_split(load_fashion_mnist(), HELDOUT_FRACTION, SEED)
    text_split = {
        "data": data_fingerprint(str(data_source("fashion-mnist"))),
        "heldout_fraction": HELDOUT_FRACTION,
        "split_seed": SEED,
    }
    return {
        "fashion-mnist 8×8 (sfd demo)": ("classifier", small.split, small.train, small.heldout),
        "fashion-mnist 32×32 (sfd demo-text)": ("text-classifier", text_split, train, heldout),
    }


def measure(cache: Path) -> dict[str, Any]:
    from sfd.apps.harness.workspace import cached_classifier
    from sfd.eval.evaluate import classify

    rows = []
    for data, (kind, split, train, heldout) in splits().items():
        for recipe, given in RECIPES.items():
            clock = time.perf_counter()
            classifier, folder, accuracy, reused, description = cached_classifier(
                cache, kind, split, train, heldout, given, progress=False
            )
            seconds = time.perf_counter() - clock
            predicted = classify(classifier, heldout.images)
            pairs = []
            for forget, override in PAIRS[data]:
                real_override = predicted[heldout.labels == override]
                real_forget = predicted[heldout.labels == forget]
                pairs.append(
                    {
                        "forget": NAMES[forget],
                        "override": NAMES[override],
                        "override_read_as_forget": float((real_override == forget).float().mean()),
                        "forget_read_as_override": float((real_forget == override).float().mean()),
                    }
                )
            rows.append(
                {
                    "data": data,
                    "recipe": recipe,
                    "max_steps": description["max_steps"],
                    "train_images": len(train),
                    "heldout_images": len(heldout),
                    "accuracy": accuracy,
                    "folder": str(folder),
                    "reused": reused,
                    "seconds": None if reused else seconds,
                    "pairs": pairs,
                }
            )
            print(f"{data}, {recipe}: {_percent(accuracy)} held-out", flush=True)
    return {"classifiers": rows}


def summary(record: dict[str, Any]) -> str:
    return "\n".join(
        f"{row['data']}, {row['recipe']} ({row['max_steps']} steps): accuracy "
        f"{_percent(row['accuracy'])}; "
        + "; ".join(
            f"real {p['override']} read as {p['forget']} {_percent(p['override_read_as_forget'])}"
            for p in row["pairs"]
        )
        for row in record["classifiers"]
    )


def write_results_page(record: dict[str, Any], json_file: str) -> str:
    rows = []
    for row in record["classifiers"]:
        built = "cache" if row["seconds"] is None else f"{row['seconds']:.0f} s"
        for pair in row["pairs"]:
            rows.append(
                (
                    row["data"],
                    row["recipe"],
                    row["max_steps"],
                    _percent(row["accuracy"]),
                    f"{pair['forget']} → {pair['override']}",
                    _percent(pair["override_read_as_forget"]),
                    _percent(1 - pair["override_read_as_forget"]),
                    _percent(pair["forget_read_as_override"]),
                    built,
                )
            )
    path = write_page(
        "classifier",
        "The evaluation classifiers of the Fashion-MNIST pairs",
        record["run"]["command"],
        json_file,
        record,
        {
            "What is measured": (
                "The demos' evaluation classifier (`sfd.eval.classifier`, a small CNN, AdamW with "
                "cosine decay, one-pixel shifts) on the demos' training split, under the old fixed "
                "800 steps and under the demos' default (`classifier_steps`: 40 passes over the "
                "training images, at most 25 M training pixels, at least 800 steps). Accuracy: on "
                "the held-out split (20 % of each class). Real override read as forget: the share "
                "of held-out real images of the override class the classifier labels as the forget "
                "class; UA ceiling = 1 − that, the UA of a generator that draws the override "
                "exactly. Built: training time on this run, or reused from the cache."
            ),
            "Classifiers": markdown_table(
                (
                    "data",
                    "recipe",
                    "steps",
                    "held-out accuracy",
                    "pair",
                    "real override read as forget",
                    "UA ceiling",
                    "real forget read as override",
                    "built",
                ),
                rows,
            ),
        },
    )
    return str(path)


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="the demos' cache (default: theirs)")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--json", default="runs/classifier/classifier.json")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def run() -> dict[str, Any]:
        from sfd.apps.harness.cache import default_cache_dir

        torch.manual_seed(SEED)
        return measure(options.cache or default_cache_dir())

    measure_and_write(options, argv, __file__, run, summary, write_results_page)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write a tiny random-weight SDXL folder (two CLIP encoders, real CLIP tokenizers) to try the SDXL
commands on CPU.

    python experiments/make_tiny_sdxl.py runs/tiny-sdxl [--prediction-type v_prediction]

The CLIP BPE vocabulary is taken from the open-clip-torch wheel (downloaded once with
`pip download --no-deps`, never installed) and cached in ~/.cache/sfd-test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sdxl_fixtures import save_tiny_sdxl_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--prediction-type", default="epsilon", choices=("epsilon", "v_prediction"))
    options = parser.parse_args()
    path = save_tiny_sdxl_pipeline(Path(options.output_dir), options.prediction_type)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

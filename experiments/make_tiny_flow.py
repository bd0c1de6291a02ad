"""Write a tiny random-weight SD3 or Flux.1 folder (real CLIP tokenizer, a small T5 tokenizer) to try
the flow-matching commands on CPU.

    python experiments/make_tiny_flow.py sd3 runs/tiny-sd3
    python experiments/make_tiny_flow.py flux runs/tiny-flux [--schnell]

The CLIP BPE vocabulary is taken from the open-clip-torch wheel (downloaded once with
`pip download --no-deps`, never installed) and cached in ~/.cache/sfd-test. Latents are 4×8×8. The
SD3 folder's CLIP-L and CLIP-G have different widths and CLIP-L's text projection is the identity, as
in the released SD3 models, so its exports can be written with `sfd export --single-file` (the tiny
Flux transformer is narrower than FLUX.1's, which diffusers' single-file loader needs: refused).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from flow_fixtures import save_tiny_flux_pipeline, save_tiny_sd3_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=("sd3", "flux"))
    parser.add_argument("output_dir")
    parser.add_argument(
        "--schnell", action="store_true", help="Flux without a guidance embedding (schnell-like)"
    )
    options = parser.parse_args()
    if options.family == "sd3":
        path = save_tiny_sd3_pipeline(Path(options.output_dir), as_released=True)
    else:
        path = save_tiny_flux_pipeline(
            Path(options.output_dir), guidance_embeds=not options.schnell
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""SD3 / Flux single-file exports: the diffusers -> original key map against diffusers' own
original -> diffusers converters (round trip = identity, every tensor bit-identical), and the
exported file loaded by the stock `from_single_file` sampling sfd's latents in one step."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.loaders.single_file_utils import (
    convert_flux_transformer_checkpoint_to_diffusers,
    convert_sd3_transformer_checkpoint_to_diffusers,
)
from flow_fixtures import (
    LATENT_SIZE,
    save_tiny_flux_pipeline,
    save_tiny_sd3_pipeline,
    tiny_flux_transformer,
    tiny_sd3_transformer,
)
from safetensors.torch import load_file

from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.pipelines.io import load_pipeline, pipeline_for, save_generator
from sfd.pipelines.single_file import UNET_PREFIX
from sfd.pipelines.single_file_flow import (
    check_flow_single_file,
    transformer_to_original,
    write_flux_single_file,
)
from sfd.teachers import FluxTeacher, SD3Teacher

pytestmark = pytest.mark.usefixtures("single_thread")
T_INIT = 0.97
DOCS = Path(__file__).parents[2] / "docs" / "families" / "flow.md"
PROMPTS = ["a photo of brad pitt", "a landscape painting"]
CONVERTERS = {
    "SD3Transformer2DModel": convert_sd3_transformer_checkpoint_to_diffusers,
    "FluxTransformer2DModel": convert_flux_transformer_checkpoint_to_diffusers,
}


def round_trip(state: dict[str, torch.Tensor], config, family: str) -> dict[str, torch.Tensor]:
    """diffusers -> original (sfd) -> diffusers (diffusers' converter, as `from_single_file`)."""
    original = transformer_to_original(state, config, family)
    assert all(key.startswith(UNET_PREFIX) for key in original)
    return CONVERTERS[family](dict(original))


def assert_identity(state: dict[str, torch.Tensor], back: dict[str, torch.Tensor]) -> None:
    assert back.keys() == state.keys(), sorted(set(back) ^ set(state))
    changed = [k for k in state if not torch.equal(back[k], state[k])]
    assert not changed, changed[:5]


def sd35_like(**extra) -> SD3Transformer2DModel:
    """A tiny SD3.5-style transformer: q/k RMS norms and (Medium's) second self-attention."""
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
        pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16, qk_norm="rms_norm",
        dual_attention_layers=(0, 2), **extra,
    )  # fmt: skip


@pytest.mark.parametrize("model", [tiny_sd3_transformer, sd35_like], ids=["sd3", "sd3.5"])
def test_sd3_key_map_inverts_the_diffusers_converter(model) -> None:
    """Fused q/k/v of both streams, SD3.5's q/k norms and attn2, the pre-only last context block
    and the final layer's (shift, scale) swap: back bit-identically through diffusers' converter."""
    transformer = model()
    state = transformer.state_dict()
    assert_identity(state, round_trip(state, transformer.config, "SD3Transformer2DModel"))


def thin(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A full-size model's state dict (built on the meta device) with every tensor cut to one
    column of distinct random values: the converters act on dim 0 only (fusing, splitting,
    swapping halves), so names and row order are all a round trip can get wrong."""
    generator = torch.Generator().manual_seed(0)
    return {
        k: torch.randn(v.shape[0], *[1] * (v.ndim - 1), generator=generator)
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_flux_key_map_inverts_the_diffusers_converter_at_full_size(guidance_embeds) -> None:
    """FLUX.1 dev / schnell (19 double, 38 single blocks, width 3072, which diffusers' converter
    assumes): every key, the fused q/k/v and single-block linear1 (q, k, v, MLP), the norm
    `scale`s and the final (shift, scale) swap come back bit-identically."""
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(guidance_embeds=guidance_embeds)
    state = thin(transformer)
    assert_identity(state, round_trip(state, transformer.config, "FluxTransformer2DModel"))


def test_sd35_large_key_map_at_full_size() -> None:
    with torch.device("meta"):  # SD3.5 Large's shape: 38 blocks with q/k norms
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
            num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
            qk_norm="rms_norm",
        )  # fmt: skip
    state = thin(transformer)
    assert_identity(state, round_trip(state, transformer.config, "SD3Transformer2DModel"))


def test_an_unknown_transformer_parameter_is_refused_in_one_line() -> None:
    transformer = tiny_sd3_transformer()
    state = {**transformer.state_dict(), "transformer_blocks.0.extra.weight": torch.ones(1)}
    with pytest.raises(SFDConfigError, match="'transformer_blocks.0.extra.weight' has no place"):
        transformer_to_original(state, transformer.config, "SD3Transformer2DModel")
    del state["transformer_blocks.0.extra.weight"], state["transformer_blocks.0.attn.to_k.weight"]
    with pytest.raises(SFDConfigError, match="2 of the 3 tensors fused"):
        transformer_to_original(state, transformer.config, "SD3Transformer2DModel")


def test_a_flow_family_without_a_known_layout_is_refused_in_one_line() -> None:
    """A new flow family exports without --single-file until its original layout is written."""
    with pytest.raises(SFDConfigError, match=r"^--single-file: no original single-file layout is "
                       r"known for QwenImagePipeline exports \(only StableDiffusion3Pipeline, "
                       r"FluxPipeline\); export without --single-file$"):  # fmt: skip
        check_flow_single_file(None, None, "QwenImagePipeline")


def config_only(folder: Path, target: Path) -> Path:
    """The export's configs without its weights: whatever loads must come from the single file."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.safetensors"))
    return target


def assert_same_weights(ours: torch.nn.Module, loaded: torch.nn.Module) -> None:
    a, b = ours.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sd3_export(tmp_path_factory) -> tuple[Path, OneStepGenerator]:
    """`sfd export --single-file --dtype fp16` of an SD3 generator that is not its teacher."""
    root = tmp_path_factory.mktemp("sd3_single_file")
    teacher = SD3Teacher(
        str(save_tiny_sd3_pipeline(root / "sd3", as_released=True)), max_sequence_length=16
    )
    generator = OneStepGenerator(copy.deepcopy(teacher), t_init=T_INIT).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in generator.denoiser.transformer.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return save_generator(generator, root / "export", single_file=True, dtype="fp16"), generator


def test_sd3_single_file_export_samples_sfds_latents_with_the_stock_loader(
    sd3_export, tmp_path
) -> None:
    """StableDiffusion3Pipeline.from_single_file (offline, config = the export's configs without
    weights) loads every network bit-identically, and one stock step from t_init gives sfd's
    latents."""
    folder, generator = sd3_export
    record = json.loads((folder / "sfd_export.json").read_text())
    assert record["single_file"] == "sfd_generator.safetensors"
    assert "pipe.text_encoder_3.eval()" in (folder / "README.md").read_text()
    configs = config_only(folder, tmp_path / "configs")
    stock = StableDiffusion3Pipeline.from_single_file(
        str(folder / record["single_file"]), config=str(configs), local_files_only=True
    )
    stock.text_encoder_3.eval()  # diffusers leaves a single file's T5 in training mode (dropout)
    ours = load_pipeline(folder)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        assert_same_weights(getattr(ours, name), getattr(stock, name))
    z = torch.randn(2, *generator.sample_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = generator(z, ours.encode(PROMPTS, [""] * 2))  # the training code path
        got = stock(PROMPTS, latents=z, output_type="latent", **record["stock_call"]).images
    print(f"SD3 single file vs sfd: max |Δ| = {(got.float() - expected).abs().max():.3g}")
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=1e-5)
    half = load_file(folder / record["single_file_variant"])
    assert {v.dtype for v in half.values() if v.is_floating_point()} == {torch.float16}
    assert half.keys() == load_file(folder / record["single_file"]).keys()


def test_the_docs_single_file_snippet_runs_and_matches_sfd(sd3_export, tmp_path, monkeypatch):
    """docs/families/flow.md's single-file snippet, verbatim: its image is sfd's (8-bit)."""
    folder, _ = sd3_export
    blocks = DOCS.read_text().split("```python\n")[1:]
    [snippet] = [b.split("```")[0] for b in blocks if "from_single_file(" in b]
    (tmp_path / "runs").mkdir()
    for name in ("sd3-tiny-generator", "sd3-tiny-single"):  # whichever export the page names
        (tmp_path / "runs" / name).symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    with torch.no_grad():
        exec(snippet, scope)
        expected = load_pipeline(folder)(
            "a photo of a cat", generator=torch.Generator().manual_seed(0), output_type="np"
        ).images[0]  # (H, W, 3) in [0, 1]
    error = np.abs(np.asarray(scope["image"]).astype(np.float64) / 255 - expected)
    assert error.max() <= 0.5 / 255 + 1e-5


def test_sfd_export_single_file_on_an_sd3_checkpoint(sd3_export, tmp_path, capsys) -> None:
    """`sfd export CKPT OUT --single-file` (the CLI path, checks included) writes the same file as
    the library export of the same generator."""
    from sfd.cli import main
    from sfd.core.generator import GENERATOR_SPEC_KEY, checkpoint_entry

    folder, generator = sd3_export
    prefix = "ema.denoiser."
    torch.save(
        {
            "pytorch-lightning_version": "2.6.0",
            "state_dict": {prefix + k: v for k, v in generator.denoiser.state_dict().items()},
            GENERATOR_SPEC_KEY: checkpoint_entry(generator, prefix),
        },
        tmp_path / "sd3.ckpt",
    )
    assert main(["export", str(tmp_path / "sd3.ckpt"), str(tmp_path / "out"), "--single-file"]) == 0
    ours, theirs = (load_file(f / "sfd_generator.safetensors") for f in (tmp_path / "out", folder))
    assert_identity(theirs, ours)


def test_flux_single_file_holds_vae_and_text_encoders_for_the_stock_loader(
    flow_dirs, tmp_path
) -> None:
    """A Flux file's VAE (`vae.`), CLIP-L and T5 (`text_encoders.`) load bit-identically with
    FluxPipeline.from_single_file (the transformer passed in: diffusers reads FLUX.1-wide ones
    only, held by the slow test and the full-size key map above)."""
    teacher = FluxTeacher(str(flow_dirs["flux"]), sample_size=LATENT_SIZE, max_sequence_length=16)
    pipeline = pipeline_for(OneStepGenerator(teacher, t_init=T_INIT))
    path = write_flux_single_file(pipeline, tmp_path / "flux.safetensors")
    configs = config_only(flow_dirs["flux"], tmp_path / "configs")
    stock = FluxPipeline.from_single_file(
        str(path), config=str(configs), local_files_only=True, transformer=teacher.transformer
    )
    for name in ("vae", "text_encoder", "text_encoder_2"):
        assert_same_weights(getattr(pipeline, name), getattr(stock, name))
    original = load_file(path)
    expected = transformer_to_original(
        teacher.transformer.state_dict(), teacher.transformer.config, "FluxTransformer2DModel"
    )
    assert_identity(expected, {k: v for k, v in original.items() if k.startswith(UNET_PREFIX)})


def test_flow_single_file_refusals(flow_dirs, tmp_path) -> None:
    """What diffusers' loader would read back wrongly or not at all is refused in one line, and
    nothing is written."""
    flux = FluxTeacher(str(flow_dirs["flux"]), sample_size=LATENT_SIZE, max_sequence_length=16)
    with pytest.raises(SFDConfigError, match=r"this Flux transformer is 32 wide; .* \(3072\) only"):
        save_generator(OneStepGenerator(flux, t_init=T_INIT), tmp_path / "a", single_file=True)
    sd3 = SD3Teacher(str(flow_dirs["sd3"]), max_sequence_length=16)  # CLIP-L, CLIP-G: 16 wide
    with pytest.raises(SFDConfigError, match="both CLIP text encoders are 16 wide"):
        save_generator(OneStepGenerator(sd3, t_init=T_INIT), tmp_path / "b", single_file=True)
    released = SD3Teacher(str(save_tiny_sd3_pipeline(tmp_path / "sd3", as_released=True)))
    generator = OneStepGenerator(released, t_init=T_INIT)
    pipeline = pipeline_for(generator)
    with torch.no_grad():
        pipeline.text_encoder.text_projection.weight.mul_(2)  # shared with the export below
    from sfd.pipelines.export_parts import EXPORT_PARTS, ExportJob

    job = ExportJob(type(pipeline), generator, pipeline=pipeline)
    EXPORT_PARTS["single_file"].check(job, True)  # its config files are those of a release
    with pytest.raises(SFDConfigError, match="CLIP-L text projection is not the identity"):
        EXPORT_PARTS["single_file"].check_loaded(job, True)
    assert not any((tmp_path / name).exists() for name in ("a", "b"))


def test_flow_single_file_refusals_come_before_any_loading(flow_dirs, tmp_path, monkeypatch):
    """The refusals that the config files decide come before the VAE and text encoders load (no
    loading bar before the one line): the pipeline is never built."""
    import sfd.pipelines.io as io

    def no_loading(generator):
        raise AssertionError("the pipeline was built before the refusal")

    monkeypatch.setattr(io, "pipeline_for", no_loading)
    flux = FluxTeacher(str(flow_dirs["flux"]), sample_size=LATENT_SIZE, max_sequence_length=16)
    with pytest.raises(SFDConfigError, match="this Flux transformer is 32 wide"):
        save_generator(OneStepGenerator(flux, t_init=T_INIT), tmp_path / "a", single_file=True)
    sd3 = SD3Teacher(str(flow_dirs["sd3"]), max_sequence_length=16)
    with pytest.raises(SFDConfigError, match="both CLIP text encoders are 16 wide"):
        save_generator(OneStepGenerator(sd3, t_init=T_INIT), tmp_path / "b", single_file=True)


@pytest.mark.slow
def test_flux_single_file_export_samples_sfds_latents_with_the_stock_loader(tmp_path) -> None:
    """A FLUX.1-wide generator (one block of each kind, 0.5 B parameters): the exported file
    loads with FluxPipeline.from_single_file bit-identically and one stock step gives sfd's
    latents."""
    wide = tiny_flux_transformer(heads=24, head_dim=128)
    teacher_dir = save_tiny_flux_pipeline(tmp_path / "flux", transformer=wide)
    del wide
    teacher = FluxTeacher(str(teacher_dir), sample_size=LATENT_SIZE, max_sequence_length=16)
    generator = OneStepGenerator(teacher, t_init=T_INIT).eval()
    folder = save_generator(generator, tmp_path / "export", single_file=True)
    record = json.loads((folder / "sfd_export.json").read_text())
    configs = config_only(folder, tmp_path / "configs")
    stock = FluxPipeline.from_single_file(
        str(folder / record["single_file"]), config=str(configs), local_files_only=True
    )
    stock.text_encoder_2.eval()  # diffusers leaves a single file's T5 in training mode (dropout)
    ours = load_pipeline(folder)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert_same_weights(getattr(ours, name), getattr(stock, name))
    z = torch.randn(2, *generator.sample_shape, generator=torch.Generator().manual_seed(3))
    call = record["stock_call"]
    with torch.no_grad():
        expected = generator(z, ours.encode(PROMPTS, [""] * 2))
        packed = stock(
            PROMPTS, latents=FluxPipeline._pack_latents(z, *z.shape), output_type="latent", **call
        ).images
    got = FluxPipeline._unpack_latents(packed, call["height"], call["width"], 1)
    print(f"Flux single file vs sfd: max |Δ| = {(got.float() - expected).abs().max():.3g}")
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=1e-5)

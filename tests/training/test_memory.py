"""The memory estimate (`sfd.training.memory`): parameter and LoRA counts against their own oracles
(sum of numel, peft's adapters), the meta-device activation measurement against a real CPU forward,
the byte arithmetic by hand, and the device budget `sfd fit` checks against."""

from __future__ import annotations

import functools
import importlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from peft import LoraConfig
from sd_fixtures import tiny_sd_unet

from sfd.errors import SFDConfigError
from sfd.teachers.lora import LORA_TARGETS
from sfd.training.activations import (
    example_inputs,
    measure_call,
    meta_twin,
)
from sfd.training.memory import (
    BUDGET_ENV,
    GIB,
    MemoryEstimate,
    check_fits,
    device_budget,
)
from sfd.training.parameter_bytes import (
    ParameterGroup,
    StaticBytes,
    attention_linear_names,
    lora_parameter_count,
    module_groups,
    optimizer_state_count,
    parameter_count,
    static_bytes,
    trainable_bytes,
)

REPO = Path(__file__).resolve().parents[2]


def tiny_sd3() -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=16,
        dual_attention_layers=(0,), qk_norm="rms_norm",
    )  # fmt: skip


def tiny_flux() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
        guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip


NETWORKS = {"unet": tiny_sd_unet, "sd3": tiny_sd3, "flux": tiny_flux}


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", NETWORKS)
def test_parameter_count_is_the_sum_of_numel(name: str) -> None:
    network = NETWORKS[name]()
    params = sum(p.numel() for _, p in network.named_parameters())
    buffers = sum(b.numel() for _, b in network.named_buffers() if b.is_floating_point())
    assert parameter_count(network) == params
    groups = module_groups({"teacher": network})
    assert sum(g.count for g in groups if g.role == "teacher") == params
    assert sum(g.count for g in groups if g.role == "teacher buffers") == buffers
    assert static_bytes(groups, 2).weights == 4 * (params + buffers)


def test_shared_parameters_are_counted_once_in_the_first_network_that_holds_them() -> None:
    base = tiny_sd_unet()
    other = tiny_sd_unet(seed=1).requires_grad_(False)
    other.conv_in = base.conv_in  # shared with `base`
    groups = module_groups({"teacher": base, "fake score": other})
    teacher = sum(g.count for g in groups if g.role == "teacher")
    fake = sum(g.count for g in groups if g.role == "fake score")
    assert teacher == numel(base)
    assert fake == numel(other) - numel(base.conv_in)
    assert all(g.element_bytes == 4 for g in groups)
    assert {g.trainable for g in groups if g.role == "fake score"} == {False}


@pytest.mark.parametrize("name", NETWORKS)
def test_lora_count_is_peft_s_for_the_same_targets(name: str) -> None:
    network = NETWORKS[name]()
    targets = attention_linear_names(network)
    expected_kinds = {"to_q", "to_k", "to_v"}
    assert expected_kinds <= {t.rsplit(".", 1)[-1] for t in targets}
    if name != "unet":  # joint attention also projects the text stream
        assert any(t.endswith("add_q_proj") for t in targets)
    counted = lora_parameter_count(network, 4, targets)
    network.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets))
    assert counted == sum(p.numel() for n, p in network.named_parameters() if "lora_" in n)


def test_lora_count_matches_peft_for_the_fake_score_s_targets() -> None:
    network = tiny_sd_unet()
    counted = lora_parameter_count(network, 8, LORA_TARGETS)
    network.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=LORA_TARGETS))
    assert counted == sum(p.numel() for n, p in network.named_parameters() if "lora_" in n)


def _real_saved(
    network: torch.nn.Module, inputs: dict[str, Any], train_weights: bool | None, reentrant: bool
) -> int:
    """Oracle: the distinct non-weight storages autograd saves in a real CPU forward.

    With reentrant checkpointing, each checkpointed block saves only its inputs in the graph.
    `train_weights` None: the network's weights keep their own `requires_grad`.
    """
    weights = {p.untyped_storage().data_ptr() for p in network.parameters()}
    if train_weights is not None:
        network.requires_grad_(train_weights)
    if reentrant:
        network.enable_gradient_checkpointing(
            lambda module, *args: torch.utils.checkpoint.checkpoint(
                module.__call__, *args, use_reentrant=True
            )
        )
    saved: dict[int, int] = {}
    alive: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        alive.append(tensor)
        return tensor

    network.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        network(**inputs)
    return sum(saved.values())


@pytest.mark.parametrize("train_weights", [False, True])
def test_meta_measurement_agrees_with_a_real_cpu_forward(train_weights: bool) -> None:
    unet = tiny_sd_unet().requires_grad_(True)
    twin = meta_twin(unet, torch.float32)
    batch = 3
    measured = measure_call(
        twin, example_inputs(twin, batch, (8, 8), torch.float32), train_weights, not train_weights
    )
    torch.manual_seed(0)
    inputs = {
        "sample": torch.randn(batch, 4, 8, 8).requires_grad_(not train_weights),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, 77, 32),
    }
    plain = _real_saved(unet, inputs, train_weights, reentrant=False)
    inputs["sample"] = inputs["sample"].detach().requires_grad_(True)  # reentrant needs one
    checkpointed = _real_saved(unet, inputs, train_weights, reentrant=True)
    # The CPU kernels keep a few q/k/v tensors fewer when only the weights need gradients.
    assert measured.saved == pytest.approx(plain, rel=0.05)
    assert measured.held == pytest.approx(checkpointed, rel=0.05)
    assert measured.held < measured.saved / 2
    assert 0 < measured.recompute < measured.saved


def test_an_adapter_twin_measures_what_a_real_adapted_forward_saves() -> None:
    """A shared base's view runs the network with its adapter alone trained: the meta twin with
    that adapter saves what a real CPU forward of the adapted network saves."""
    from peft import inject_adapter_in_model

    from sfd.teachers.adapter_settings import AdapterSettings
    from sfd.training.activations import adapter_twin

    config = AdapterSettings(rank=4).peft_config()
    unet = tiny_sd_unet()
    twin = adapter_twin(unet, config, "generator", torch.float32)
    trained = [n for n, p in twin.named_parameters() if p.requires_grad]
    assert trained and all(".generator." in n for n in trained)
    batch = 3
    measured = measure_call(twin, example_inputs(twin, batch, (8, 8), torch.float32), True, False)
    plain = measure_call(
        meta_twin(unet, torch.float32),
        example_inputs(unet, batch, (8, 8), torch.float32),
        False,
        True,
    )
    inject_adapter_in_model(config, unet, adapter_name="generator")
    for name, param in unet.named_parameters():
        param.requires_grad_(".generator." in name)
    torch.manual_seed(0)
    inputs = {
        "sample": torch.randn(batch, 4, 8, 8),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, 77, 32),
    }
    real = _real_saved(unet, inputs, None, reentrant=False)
    assert measured.saved == pytest.approx(real, rel=0.05)
    assert measured.saved > plain.saved  # the adapters' own inputs and products


def test_activations_grow_with_the_batch() -> None:
    twin = meta_twin(tiny_sd_unet(), torch.bfloat16)
    one, two = (
        measure_call(twin, example_inputs(twin, b, (8, 8), torch.bfloat16), True, False).saved
        for b in (1, 2)
    )
    assert one < two <= 2 * one


def test_static_bytes_by_hand() -> None:
    groups = [
        ParameterGroup("teacher", 100, 4, False),
        ParameterGroup("generator", 10, 4, True),
        ParameterGroup("fake score", 10, 2, True),
    ]
    assert static_bytes(groups, 2) == StaticBytes(400 + 40 + 20, 40 + 20, 2 * (40 + 20))
    assert static_bytes(groups, 2, shards=4) == StaticBytes(115, 15, 30)
    assert trainable_bytes(groups, 2) == 4 * 40 + 4 * 20


def test_optimizer_state_counts() -> None:
    assert optimizer_state_count(torch.optim.Adam) == 2
    assert optimizer_state_count(functools.partial(torch.optim.Adam, amsgrad=True)) == 3
    assert optimizer_state_count(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)) == 1
    assert optimizer_state_count(functools.partial(torch.optim.SGD, lr=0.1)) == 0
    assert optimizer_state_count(torch.optim.LBFGS) == 2  # needs a closure: counted as Adam


def _trainer(device: str) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


def test_device_budget_reads_cuda_s_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * GIB)
    )
    assert device_budget(_trainer("cuda:0")) == 80 * GIB
    assert device_budget(_trainer("cpu")) is None
    monkeypatch.setenv(BUDGET_ENV, "24")
    assert device_budget(_trainer("cpu")) == 24 * GIB
    for bad in ("0", "-3", "inf", "nan", "lots"):
        monkeypatch.setenv(BUDGET_ENV, bad)
        with pytest.raises(SFDConfigError, match=BUDGET_ENV):
            device_budget(_trainer("cpu"))


def test_a_run_that_does_not_fit_is_refused_in_one_line() -> None:
    estimate = MemoryEstimate(
        (ParameterGroup("teacher", GIB, 4, False),), StaticBytes(4 * GIB, 0, 0), GIB, overhead=0
    )
    check_fits(estimate, None, 1, False)  # unknown memory: nothing to check
    check_fits(estimate, 5 * GIB, 1, False)
    with pytest.raises(SFDConfigError) as error:
        check_fits(estimate, 4 * GIB, 8, True)
    assert "\n" not in str(error.value)
    assert "5.00 GiB per device" in str(error.value)
    assert "8 device(s), sharded has 4.00 GiB" in str(error.value)


def test_the_fit_estimate_counts_the_instantiated_networks(tiny_teacher_dir: Path) -> None:
    from conftest import fit_args

    from sfd.training.cli import build_from_fit_config
    from sfd.training.memory import estimate_module

    args = fit_args(tiny_teacher_dir, Path("unused"))[1:]
    module, _ = build_from_fit_config(args)
    estimate = estimate_module(module, "32-true")
    teacher = numel(module.teacher)
    assert estimate.role_count("teacher") == teacher
    assert estimate.role_count("generator", trainable=True) == numel(module.generator)
    assert estimate.role_count("fake score", trainable=True) == numel(module.fake_score)
    trained = numel(module.generator) + numel(module.fake_score)
    ema = numel(module.ema) if module.ema is not None else 0
    buffers = sum(b.numel() for b in module.buffers() if b.is_floating_point())
    assert estimate.static.weights == 4 * (teacher + trained + ema + buffers)
    assert estimate.static.gradients == 4 * trained
    assert estimate.static.optimizer == 2 * 4 * trained  # Adam
    assert estimate.activations is not None and estimate.activations > 0
    assert "memory estimate" in estimate.lines()[0]


def _shared_base_module(teacher_dir: Path, *extra: str) -> Any:
    from conftest import CONFIGS, fit_args

    from sfd.training.cli import build_from_fit_config

    args = fit_args(teacher_dir, Path("unused"), "-c", str(CONFIGS / "shared_base.yaml"), *extra)
    return build_from_fit_config(args[1:])[0]


@pytest.mark.parametrize("checkpointing", ["false", "true"])
def test_a_shared_base_estimate_counts_activations_and_the_adapters(
    tiny_teacher_dir: Path, checkpointing: str
) -> None:
    """The views hold no network: the estimate measures the shared one through them, each call
    with its adapter on (the teacher's with none), and trains the adapters alone."""
    from sfd.training.memory import estimate_module

    module = _shared_base_module(
        tiny_teacher_dir, "--model.adapters.gradient_checkpointing", checkpointing
    )
    estimate = estimate_module(module, "32-true")
    generator, fake = module.generator.denoiser, module.fake_score
    assert estimate.activations is not None and estimate.activations > 0
    assert estimate.role_count("generator", trainable=True) == numel(generator)
    assert estimate.role_count("fake score", trainable=True) == numel(fake)
    assert estimate.role_count("teacher", trainable=True) == 0
    assert estimate.role_count("teacher") == numel(module.teacher) - sum(
        numel(v) for v in (generator, fake, module.ema.denoiser)
    )
    assert estimate.static.gradients == 4 * (numel(generator) + numel(fake))
    assert "activations not estimated" not in estimate.lines()[1]


def test_a_shared_base_run_that_fits_only_without_its_activations_is_refused(
    tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch import Trainer

    from sfd.training.memory import check_run_memory, estimate_module

    module = _shared_base_module(tiny_teacher_dir)
    estimate = estimate_module(module, "32-true", overhead=0)
    assert estimate.activations > estimate.static.total * 0.05
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    monkeypatch.setenv(BUDGET_ENV, str((estimate.static.total + estimate.activations / 2) / GIB))
    with pytest.raises(SFDConfigError, match="per device") as error:
        check_run_memory(module, trainer)
    # The run already trains adapters on one shared base: the line does not suggest it.
    assert "shared base" not in str(error.value)
    assert "lower --model.batch_size" in str(error.value)


@pytest.mark.parametrize(("adapters", "checkpointing"), [(False, False), (True, True)])
def test_the_refusal_suggests_only_what_the_run_has_not_applied(
    tiny_teacher_dir: Path, adapters: bool, checkpointing: bool
) -> None:
    from conftest import fit_args

    from sfd.training.cli import build_from_fit_config
    from sfd.training.memory import REMEDIES, remedies_for

    if adapters:
        module = _shared_base_module(
            tiny_teacher_dir, "--model.adapters.gradient_checkpointing", "true"
        )
    else:
        module = build_from_fit_config(fit_args(tiny_teacher_dir, Path("unused"))[1:])[0]
    suggested = remedies_for(module)
    assert ("train adapters on one shared base" in suggested) == (not adapters)
    assert ("turn on the teacher's gradient_checkpointing" in suggested) == (not checkpointing)
    # sfd_fsdp refuses model.adapters: sharding is no way out for a shared-base run.
    assert ("shard over more devices" in suggested) == (not adapters)
    assert suggested[0] == REMEDIES[0]


def _memory_table() -> Any:
    sys.path.insert(0, str(REPO / "experiments"))
    return importlib.import_module("memory_table")


PUBLISHED = {  # parameters + persistent buffers of the published checkpoints
    "SD 1.5": 859.52e6,
    "SDXL": 2.567e9,
    "SD3.5 Medium": 2.5e9,
    "SD3.5 Large": 8.1e9,
    "Flux.1-dev": 11.9e9,
}


def test_the_five_families_build_on_meta_with_their_published_sizes() -> None:
    table = _memory_table()
    assert [f[0] for f in table.FAMILIES] == list(PUBLISHED)
    for name, network_class, config, *_ in table.FAMILIES:
        network = table.build(network_class, config)
        size = parameter_count(network) + sum(b.numel() for b in network.buffers())
        assert size == pytest.approx(PUBLISHED[name], rel=0.02), name
        assert all(p.device.type == "meta" for p in network.parameters())


def test_fit_start_prints_the_estimate_and_refuses_what_does_not_fit(
    tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from conftest import fit_args
    from lightning.pytorch import Trainer

    from sfd.training.cli import build_from_fit_config
    from sfd.training.memory import check_run_memory

    module, _ = build_from_fit_config(fit_args(tiny_teacher_dir, Path("unused"))[1:])
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    with caplog.at_level(logging.INFO):
        estimate = check_run_memory(module, trainer)  # CPU: printed, not checked
    assert f"teacher {numel(module.teacher) / 1e6:.1f} M" in caplog.text
    assert estimate.overhead == 0  # the CUDA allowance only on a GPU
    monkeypatch.setenv(BUDGET_ENV, str(estimate.total / GIB * 1.01))
    check_run_memory(module, trainer)
    monkeypatch.setenv(BUDGET_ENV, str(estimate.total / GIB * 0.99))
    with pytest.raises(SFDConfigError, match="per device"):
        check_run_memory(module, trainer)


def test_the_meta_twin_carries_the_networks_adapters_and_what_is_trained() -> None:
    from sfd.teachers.lora import add_lora

    unet = tiny_sd_unet()
    trained = add_lora(unet, rank=4, lora_alpha=4)
    twin = meta_twin(unet, torch.bfloat16)
    assert [n for n, p in twin.named_parameters() if p.requires_grad] == trained
    assert parameter_count(twin) == parameter_count(unet)
    assert {p.device.type for p in twin.parameters()} == {"meta"}
    assert {p.dtype for p in twin.parameters()} == {torch.bfloat16}


def test_a_stable_diffusion_run_with_a_lora_fake_score(sd_dirs: dict[str, Path]) -> None:
    from sd_fixtures import celebrity_conditions

    from sfd.core.module import SFDModule
    from sfd.core.sigma import UniformTimestepSigma
    from sfd.teachers import StableDiffusionLoRAFakeScore, StableDiffusionTeacher
    from sfd.training.memory import estimate_module

    source = str(sd_dirs["epsilon"])
    estimates = {}
    for checkpointing in (False, True):
        teacher = StableDiffusionTeacher(source, gradient_checkpointing=checkpointing)
        fake = StableDiffusionLoRAFakeScore(source, rank=4)
        module = SFDModule(
            teacher, celebrity_conditions(), UniformTimestepSigma(20, 980), batch_size=2,
            teacher_guidance=4.5, fake_train_guidance=4.5, fake_eval_guidance=4.5,
            ema_decay=None, fake_score=fake,
        )  # fmt: skip
        estimates[checkpointing] = estimate_module(module, "bf16-mixed")
    estimate = estimates[True]
    lora = sum(p.numel() for p in fake.parameters() if p.requires_grad)  # peft's adapters
    assert estimate.role_count("fake score", trainable=True) == lora
    base = numel(fake.unet) - lora
    assert estimate.role_count("fake score", trainable=False) == base
    assert estimate.static.gradients == 4 * (lora + numel(module.generator))
    assert 0 < estimates[True].activations < estimates[False].activations


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_estimate_of_a_flow_transformer_run(flow_dirs: dict[str, Path], family: str) -> None:
    from sd_fixtures import celebrity_conditions

    from sfd.core.module import SFDModule
    from sfd.core.sigma import LogitNormalTime
    from sfd.teachers import FluxTeacher, SD3Teacher
    from sfd.training.activations import CLIP_TOKENS
    from sfd.training.memory import estimate_module

    teacher_class = SD3Teacher if family == "sd3" else FluxTeacher
    estimates = []
    for length in (8, 16):
        module = SFDModule(
            teacher_class(str(flow_dirs[family]), max_sequence_length=length),
            celebrity_conditions(), LogitNormalTime(0.0, 1.0, 0.02, 0.98), t_init=0.9,
            batch_size=2, ema_decay=None,
        )  # fmt: skip
        estimates.append(estimate_module(module, "bf16-mixed"))
        network = module.teacher.transformer
        inputs = example_inputs(network, 2, module.teacher.sample_shape[-2:], torch.float32, length)
        text = inputs["encoder_hidden_states"].shape[1]
        assert text == length + (CLIP_TOKENS if family == "sd3" else 0)
        with torch.no_grad():  # the inputs fit the real network (as shapes)
            real = {k: torch.zeros(v.shape, dtype=v.dtype) if isinstance(v, torch.Tensor) else v
                    for k, v in inputs.items()}  # fmt: skip
            network(**real)
    assert estimates[0].role_count("teacher") == numel(module.teacher)
    assert 0 < estimates[0].activations < estimates[1].activations  # a longer prompt costs more


@pytest.mark.slow
def test_the_memory_table_of_sd15(tmp_path: Path) -> None:
    table = _memory_table()
    table.main(["--families", "SD 1.5", "--json", str(tmp_path / "m.json"), "--no-page"])
    [family] = json.loads((tmp_path / "m.json").read_text())["families"]
    full, shared, fsdp = family["modes"]
    assert family["lora_params"] == family["peft_lora_params"]
    # The shared base trains the shipped adapters (default layers: attention among them).
    assert shared["trainable_bytes"] == 2 * 16 * family["shipped_lora_params"]  # fp32 + Adam, ×2
    assert family["shipped_lora_params"] > family["lora_params"]
    assert family["shipped_lora_layers"] > family["lora_targets"]
    assert full["trainable_bytes"] == 2 * 16 * family["params"]
    for key in ("weights", "gradients", "optimizer"):
        assert fsdp[key] == pytest.approx(full[key] / 8, abs=1)
    for row in (full, shared, fsdp):
        assert row["checkpointing"]["activations"] < row["no_checkpointing"]["activations"]
        assert row["checkpointing"]["largest_batch"] >= row["no_checkpointing"]["largest_batch"]

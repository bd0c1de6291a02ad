"""The revival test: a seeded fine-tune of a copy; the model under test is never changed."""

from __future__ import annotations

import copy

import pytest
import torch
from gaussian import GaussianClassNet
from text_fixtures import linear_classifier, save_tiny_bert, save_tiny_text_teacher, text_sensitive

from sfd.core.generator import OneStepGenerator
from sfd.core.losses import eps_mse
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import RevivalBudget
from sfd.eval.classifier import Classifier
from sfd.eval.concepts import PromptSet
from sfd.eval.evaluate import ddim_sampler, one_step_sampler
from sfd.eval.revival import (
    checkpoints,
    revival_images,
    revive,
    revive_class_sampler,
    revive_text_model,
)
from sfd.eval.text_models import PromptEncoder, one_step_text_model, vae_decoder
from sfd.images import from_uint8
from sfd.teachers import EDMDenoiser, PretrainedVPTeacher, StableDiffusionTeacher
from sfd.teachers.stable_diffusion import load_text_encoder

FORGET = PromptSet("forget_train", ["the number 7", "a drawing of seven"], [2, 2])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("revival")
    return save_tiny_text_teacher(root / "teacher", save_tiny_bert(root / "bert"))


def text_model(teacher_dir):
    teacher = text_sensitive(StableDiffusionTeacher(str(teacher_dir)))
    encoder = PromptEncoder(*load_text_encoder(str(teacher_dir)))
    return one_step_text_model(OneStepGenerator(teacher, 2.5), encoder, vae_decoder(None))


def real_images(count: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (count, 1, 8, 8), generator=torch.Generator().manual_seed(5),
                         dtype=torch.uint8)  # fmt: skip


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_checkpoints_are_quarters() -> None:
    assert checkpoints(40) == [0, 10, 20, 40]
    assert checkpoints(2) == [0, 1, 2]
    assert checkpoints(1) == [0, 1]


def test_text_revival_changes_only_a_copy_and_is_seeded(teacher_dir, single_thread):
    model = text_model(teacher_dir)
    network, text_encoder = snapshot(model.network), snapshot(model.encoder.text_encoder)
    files = {p: p.read_bytes() for p in teacher_dir.rglob("*.safetensors")}
    budget = RevivalBudget(steps=4, images=3, lr=1e-3, batch_size=2, seed=3)

    def run(seed_budget: RevivalBudget):
        return revive_text_model(model, linear_classifier(), FORGET, 2, 1, 3, real_images(),
                                 seed_budget, ua_images=16)  # fmt: skip

    first, second = run(budget), run(budget)
    assert first.steps == [0, 1, 2, 4] and len(first.ua) == 4 and len(first.losses) == 4
    assert first.ua == second.ua and first.losses == second.losses  # same seed, same sequence
    other = run(RevivalBudget(steps=4, images=3, lr=1e-3, batch_size=2, seed=4))
    assert other.losses != first.losses
    for key, value in model.network.state_dict().items():  # bit-identical model under test
        assert torch.equal(value, network[key]), key
    for key, value in model.encoder.text_encoder.state_dict().items():
        assert torch.equal(value, text_encoder[key]), key
    assert files == {p: p.read_bytes() for p in teacher_dir.rglob("*.safetensors")}
    assert "sigma_init" in first.objective and "the forget prompt 'the number 7'" == first.condition


def test_first_loss_is_the_denoising_loss_at_sigma_init(teacher_dir):
    """Oracle: the hand-written ε-MSE of the model under test on the same draws."""
    model = text_model(teacher_dir)
    budget = RevivalBudget(steps=1, images=3, lr=1e-3, batch_size=2, seed=3)
    result = revive_text_model(model, linear_classifier(), FORGET, 2, 1, 3, real_images(), budget,
                               ua_images=4)  # fmt: skip
    rng = torch.Generator().manual_seed(3)
    x0 = from_uint8(real_images())[torch.randint(3, (2,), generator=rng)]
    noise = torch.randn(x0.shape, generator=rng)
    sigma = torch.full((2,), 2.5)
    cond = model.encoder.condition(["the number 7", "the number 7"])
    with torch.no_grad():
        expected = eps_mse(model.network(x0 + 2.5 * noise, sigma, cond), x0, sigma).mean()
    assert result.losses[0] == pytest.approx(expected.item(), rel=1e-5)


def test_class_revival_of_a_ddim_teacher_and_a_generator(tiny_teacher_dir, single_thread):
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    torch.manual_seed(0)
    classifier = Classifier(1, 10, (8, 8), width=8, feature_dim=8).eval()
    budget = RevivalBudget(steps=2, images=3, lr=1e-3, batch_size=2)
    before = snapshot(teacher)
    for sampler in (
        ddim_sampler(teacher, 2),
        one_step_sampler(OneStepGenerator(copy.deepcopy(teacher))),
    ):
        result = revive_class_sampler(sampler, classifier, 4, real_images(), budget, ua_images=8)
        assert result.steps == [0, 1, 2] and all(0 <= u <= 1 for u in result.ua)
        assert ("DDPM schedule" in result.objective) == (sampler.sigma_init is None)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_revival_needs_images_of_the_class_and_a_sound_budget() -> None:
    images, labels = real_images(4), torch.tensor([0, 1, 1, 2])
    assert len(revival_images(images, labels, 1, 2, 0)) == 2
    with pytest.raises(SFDConfigError, match="needs 1 real images of the forgotten class 3"):
        revival_images(images, labels, 3, 1, 0)
    for field in ("steps", "images", "batch_size"):
        with pytest.raises(SFDConfigError, match=f"revival {field}=-2"):
            RevivalBudget(**{field: -2})
    with pytest.raises(SFDConfigError, match="revival lr=0"):
        RevivalBudget(lr=0)


def test_the_fine_tune_revives_a_forgotten_gaussian_class(single_thread) -> None:
    """Oracle on an analytic one-step set-up: class 0 of a Gaussian denoiser has been "forgotten"
    (its mean is the override class's); the k real images are drawn around the true class-0 mean.
    The fine-tune's loss falls, the copy's weights follow a hand-written Adam iteration of the
    ε-MSE at σ_init on the same draws, its class-0 mean moves to the images', so UA (share of
    one-step samples nearer the override mean than the real class's) falls from 1 to 0; the
    model under test is unchanged. A fine-tune that does not step fails every one of these."""
    override, real = torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), -2.0)
    network = EDMDenoiser(GaussianClassNet(torch.stack([override, override]), 0.5), (1, 2, 2), 2)
    before = snapshot(network)
    x0 = real + 0.1 * torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    budget, sigma_init = RevivalBudget(steps=40, images=4, lr=0.2, batch_size=2, seed=3), 2.5
    z = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    labels = torch.zeros(64, dtype=torch.long)
    copies = []

    def measure(work) -> float:  # UA of the copy's one-step samples G(z) = D(σ_init·z, σ_init, 0)
        copies.append(work)
        samples = work(sigma_init * z, torch.full((64,), sigma_init), labels)
        nearer = (samples - override).flatten(1).norm(dim=1) < (samples - real).flatten(1).norm(
            dim=1
        )
        return nearer.float().mean().item()

    def condition(count: int) -> torch.Tensor:
        return torch.zeros(count, dtype=torch.long)

    result = revive(network, x0, condition, sigma_init, measure, budget, "class 0")
    # the hand-written reference: Adam on ε-MSE at σ_init, the same draws in the same order
    reference = copy.deepcopy(network)
    optimizer = torch.optim.Adam(reference.parameters(), lr=budget.lr)
    rng, losses = torch.Generator().manual_seed(budget.seed), []
    for _ in range(budget.steps):
        batch = x0[torch.randint(4, (2,), generator=rng)]
        sigma = torch.full((2,), sigma_init)
        x = batch + sigma_init * torch.randn(batch.shape, generator=rng)
        error = (reference(x, sigma, condition(2)) - batch) / sigma_init
        loss = error.pow(2).flatten(1).mean(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert result.losses == pytest.approx(losses, rel=1e-5)
    assert sum(result.losses[-10:]) / 10 < 0.2 * result.losses[0]  # the loss falls
    tuned = copies[-1].net
    assert all(work is copies[0] for work in copies) and copies[0] is not network  # one copy
    assert torch.allclose(tuned.means, reference.net.means, atol=1e-5)
    assert (tuned.means[0] - real).abs().max() < 0.5  # class 0 moved to the real images
    assert torch.equal(tuned.means[1], override)  # no gradient reaches the other class
    assert result.ua[0] == 1.0 and result.ua[-1] == 0.0 and result.steps_to_revival is not None
    for key, value in network.state_dict().items():  # the model under test: bit-identical
        assert torch.equal(value, before[key]), key

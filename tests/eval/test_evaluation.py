"""Evaluation against oracles: hand-built UA cases, FID/KID identities, DDIM vs closed forms."""

from __future__ import annotations

import importlib.metadata
import math
import os

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from scipy import linalg
from torch import Tensor, nn

from sfd.core.ddim import ddim_sigmas, sample_ddim
from sfd.errors import SFDConfigError
from sfd.eval.evaluate import (
    ImageSampler,
    class_noise,
    classify,
    ddim_sampler,
    evaluate_sampler,
    generate,
    measure_throughput,
    ua_ceiling,
)
from sfd.eval.metrics import (
    ClassifierFeatures,
    feature_distances,
    label_histogram,
    per_class_accuracy,
    unlearning_accuracy,
)
from sfd.images import to_uint8 as images_to_uint8
from sfd.provenance import environment, library_versions
from sfd.teachers import Denoiser, sigmas_from_alphas_cumprod

NUM_CLASSES = 10


class LabelReadingClassifier(nn.Module):
    """Oracle classifier: an image's label is written in its first pixel (value = 20·label)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, x: Tensor) -> Tensor:
        pixel = ((x[:, 0, 0, 0] + 1) * 127.5).round()  # back to 0..255
        label = (pixel / 20).round().long().clamp(0, NUM_CLASSES - 1)
        return nn.functional.one_hot(label, NUM_CLASSES).float()

    def features(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, 1:9]  # (B, 8) pixels other than the label pixel


def images_labelled(predicted: Tensor, z: Tensor) -> Tensor:
    """[-1, 1] images (B, 1, 4, 4) that the oracle classifier labels `predicted`."""
    images = z.tanh().clone()
    images[:, 0, 0, 0] = predicted.float() * 20 / 127.5 - 1
    return images


def test_unlearning_accuracy_divides_by_forget_samples_only() -> None:
    predicted = torch.tensor([0, 0, 0] + [1] * 15 + [5, 5])  # labels of 20 forget-class samples
    assert unlearning_accuracy(predicted, [0]) == pytest.approx(1 - 3 / 20)
    assert unlearning_accuracy(predicted, [0, 5]) == pytest.approx(1 - 5 / 20)
    assert label_histogram(predicted, NUM_CLASSES) == [3, 15, 0, 0, 0, 2, 0, 0, 0, 0]
    with pytest.raises(SFDConfigError):
        unlearning_accuracy(torch.tensor([], dtype=torch.long), [0])


def test_per_class_accuracy_hand_built() -> None:
    labels = torch.tensor([1, 1, 1, 1, 2, 2])
    predicted = torch.tensor([1, 1, 1, 0, 2, 7])
    assert per_class_accuracy(predicted, labels, [1, 2]) == {1: 0.75, 2: 0.5}
    with pytest.raises(SFDConfigError):
        per_class_accuracy(predicted, labels, [3])


def test_classify_reads_uint8_images_like_saved_pngs() -> None:
    predicted = torch.tensor([3, 0, 9, 1])
    images = images_to_uint8(images_labelled(predicted, torch.randn(4, 1, 4, 4)))
    assert torch.equal(classify(LabelReadingClassifier(), images), predicted)


def test_evaluate_sampler_ua_against_hand_built_labels() -> None:
    """A sampler whose forget samples are labelled 0 when z[0] > 0 and 1 (override) otherwise."""
    num_per_class, seed, forget, override = 12, 3, 4, 1

    def sample(labels: Tensor, z: Tensor) -> Tensor:
        keep = (labels == forget) & (z[:, 0, 0, 0] > 0)
        to_override = (labels == forget) & ~keep
        predicted = torch.where(to_override, torch.full_like(labels, override), labels)
        predicted = torch.where((labels == 7) & (z[:, 0, 0, 1] > 0), 2, predicted)
        return images_labelled(predicted, z)

    sampler = ImageSampler("oracle", 1, (1, 4, 4), sample)
    real = images_to_uint8(torch.rand(40, 1, 4, 4) * 2 - 1)
    result = evaluate_sampler(
        sampler,
        LabelReadingClassifier(),
        real,
        NUM_CLASSES,
        [forget],
        [override],
        num_per_class,
        seed=seed,
        batch_size=7,
        kid_subsets=5,
        kid_subset_size=20,
        throughput_batch=8,
        throughput_repeats=2,
    )
    labels = torch.arange(NUM_CLASSES).repeat_interleave(num_per_class)
    z = class_noise(len(labels), (1, 4, 4), seed)
    kept = (z[labels == forget][:, 0, 0, 0] > 0).sum().item()
    assert 0 < kept < num_per_class  # the case is non-trivial
    assert result.ua == pytest.approx(1 - kept / num_per_class)
    assert result.forget_as_override == pytest.approx(1 - kept / num_per_class)
    expected_histogram = [0] * NUM_CLASSES
    expected_histogram[forget], expected_histogram[override] = kept, num_per_class - kept
    assert result.forget_histogram == expected_histogram
    wrong_7 = (z[labels == 7][:, 0, 0, 1] > 0).float().mean().item()
    assert result.remain_per_class[7] == pytest.approx(1 - wrong_7)
    assert set(result.remain_per_class) == set(range(NUM_CLASSES)) - {forget}
    others = [v for c, v in result.remain_per_class.items() if c != 7]
    assert all(v == 1.0 for v in others)
    assert result.remain_accuracy == pytest.approx((8 + 1 - wrong_7) / 9)
    assert math.isfinite(result.fid_remain) and result.fid_remain >= 0
    assert result.images_per_second is not None and result.images_per_second > 0


def frechet_distance_reference(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance of two feature sets computed independently with scipy."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


class LinearFeatures(nn.Module):
    """A fixed random feature map (B, C, H, W) -> (B, 6), standing in for a trained classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.projection = nn.Linear(16, 6)

    def features(self, x: Tensor) -> Tensor:
        return torch.tanh(self.projection(x.flatten(1)))


def test_fid_and_kid_identities_and_scipy_oracle() -> None:
    generator = torch.Generator().manual_seed(0)
    real = images_to_uint8(torch.rand(300, 1, 4, 4, generator=generator) * 2 - 1)
    shifted = images_to_uint8(torch.rand(300, 1, 4, 4, generator=generator) * 1.5 - 0.5)
    extractor = LinearFeatures()
    same = feature_distances(real, real, extractor, kid_subsets=10, kid_subset_size=100)
    assert abs(same.fid) < 1e-3
    assert abs(same.kid_mean) < 1e-2
    moved = feature_distances(real, shifted, extractor, kid_subsets=10, kid_subset_size=100)
    assert moved.fid > 0.05 and moved.kid_mean > 0.01
    features = ClassifierFeatures(extractor, 6)
    expected = frechet_distance_reference(
        features(real).double().numpy(), features(shifted).double().numpy()
    )
    assert moved.fid == pytest.approx(expected, rel=1e-3)
    with pytest.raises(TypeError):
        feature_distances(real.float(), real, extractor)


class GaussianDenoiser(Denoiser):
    """The exact denoiser of data x0 ~ N(mu, s²·I): D(x, σ) = mu + s²/(s² + σ²)·(x − mu)."""

    def __init__(self, mu: float, s: float, sigmas: Tensor) -> None:
        super().__init__()
        self.mu, self.s = mu, s
        self.sample_shape = (1, 4, 4)
        self.register_buffer("sigmas", sigmas)

    @property
    def sigma_table(self) -> Tensor:
        return self.sigmas

    def denoise(self, x: Tensor, sigma: Tensor, cond: object) -> Tensor:
        sigma = sigma.reshape(-1, 1, 1, 1).double()
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x.double() - self.mu)


def linear_schedule() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )


def test_ddim_matches_closed_form_on_gaussian_data() -> None:
    """Each σ-space DDIM step multiplies (x − mu) by (s² + σ·σ')/(s² + σ²) for Gaussian data."""
    mu, s = 0.3, 0.5
    sigmas_t = sigmas_from_alphas_cumprod(linear_schedule().alphas_cumprod)
    denoiser = GaussianDenoiser(mu, s, sigmas_t)
    z = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    for steps in (1, 7, 50):
        sigmas = ddim_sigmas(sigmas_t, steps).double()
        factor = torch.prod((s**2 + sigmas[:-1] * sigmas[1:]) / (s**2 + sigmas[:-1] ** 2))
        x_start = z.double() * (1 + sigmas[0] ** 2).sqrt()
        expected = mu + factor * (x_start - mu)
        result = sample_ddim(denoiser, z, None, sigmas.float())
        torch.testing.assert_close(result.double(), expected, rtol=1e-4, atol=1e-4)
    # Many steps converge to the exact probability-flow ODE solution.
    sigmas = ddim_sigmas(sigmas_t, 1000)
    exact = mu + s / math.sqrt(s**2 + sigmas[0].item() ** 2) * (
        z * math.sqrt(1 + sigmas[0].item() ** 2) - mu
    )
    torch.testing.assert_close(sample_ddim(denoiser, z, None, sigmas), exact, rtol=0, atol=2e-2)


def test_ddim_matches_diffusers_ddim_scheduler() -> None:
    """Same trajectory as diffusers' DDIMScheduler (η = 0, trailing) driving the same ε-model."""
    mu, s, steps = -0.2, 0.7, 50
    ddpm = linear_schedule()
    alphas_cumprod = ddpm.alphas_cumprod
    sigmas_t = sigmas_from_alphas_cumprod(alphas_cumprod)
    denoiser = GaussianDenoiser(mu, s, sigmas_t)
    scheduler = DDIMScheduler.from_config(
        ddpm.config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )
    scheduler.set_timesteps(steps)
    z = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    x_t = z.clone()
    for t in scheduler.timesteps:
        alpha = alphas_cumprod[t]
        sigma = sigmas_t[t]
        x0_hat = denoiser(x_t / alpha.sqrt(), sigma, None)
        eps = (x_t - alpha.sqrt() * x0_hat) / (1 - alpha).sqrt()
        x_t = scheduler.step(eps, t, x_t, eta=0.0).prev_sample
    ours = sample_ddim(denoiser, z, None, ddim_sigmas(sigmas_t, steps))
    torch.testing.assert_close(ours, x_t, rtol=1e-4, atol=1e-4)


def test_ddim_sigmas_and_bad_steps() -> None:
    sigmas_t = sigmas_from_alphas_cumprod(linear_schedule().alphas_cumprod)
    sigmas = ddim_sigmas(sigmas_t, 50)
    assert len(sigmas) == 51 and sigmas[-1] == 0
    assert sigmas[0] == sigmas_t[999] and sigmas[-2] == sigmas_t[19]
    assert torch.equal(ddim_sigmas(sigmas_t, 1000)[:-1], sigmas_t.flip(0))
    with pytest.raises(SFDConfigError):
        ddim_sigmas(sigmas_t, 0)


def test_ddim_sampler_nfe_and_throughput() -> None:
    sigmas_t = sigmas_from_alphas_cumprod(linear_schedule().alphas_cumprod)
    calls = []

    class Counting(GaussianDenoiser):
        def denoise(self, x: Tensor, sigma: Tensor, cond: object) -> Tensor:
            calls.append(len(x))
            return super().denoise(x, sigma, cond)

    sampler = ddim_sampler(Counting(0.0, 1.0, sigmas_t), 20)
    throughput = measure_throughput(sampler, NUM_CLASSES, batch_size=5, repeats=2)
    assert sampler.nfe == 20 and len(calls) == 20 * 3  # warm-up + 2 timed calls
    assert throughput.images_per_second > 0 and throughput.batch_size == 5


def test_library_versions_recorded() -> None:
    versions = library_versions()
    assert versions["torch"] == importlib.metadata.version("torch")
    assert versions["torchmetrics"] == importlib.metadata.version("torchmetrics")
    extended = library_versions(["no-such-distribution-sfd"])
    assert list(extended)[:-1] == list(versions) and extended["no-such-distribution-sfd"] == (
        "not installed"
    )
    assert environment()["cpu_count"] == os.cpu_count()


def test_generate_reports_every_ddim_step_as_plain_lines(capsys) -> None:
    """`sfd eval` of a teacher: progress counts network evaluations (chunks × DDIM steps), and
    in a log that is not a terminal it prints a line per 5 % of them, the same images as without."""
    sigmas_t = sigmas_from_alphas_cumprod(linear_schedule().alphas_cumprod)
    sampler = ddim_sampler(GaussianDenoiser(0.0, 1.0, sigmas_t), 10)
    labels = torch.arange(8) % NUM_CLASSES
    quiet = generate(sampler, labels, seed=3, batch_size=4, progress=False)
    assert capsys.readouterr().out == ""
    shown = generate(sampler, labels, seed=3, batch_size=4, progress=True)
    assert torch.equal(shown, quiet)
    lines = capsys.readouterr().out.splitlines()  # captured: not a terminal
    assert lines == [f"sampling {sampler.name} {n}/20 ({n * 5}%)" for n in range(1, 21)]


class MarkReader(torch.nn.Module):
    """An oracle classifier: class 0 where the first pixel is bright (> 0 in [-1, 1]), else 1."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marked = x[:, 0, 0, 0] > 0  # (B,)
        return torch.stack([marked.float(), (~marked).float()], dim=1)  # (B, 2)


def test_the_ua_ceiling_is_one_minus_the_override_images_read_as_forget() -> None:
    """Ten real override images (class 1), three marked so the classifier reads them as the
    forget class 0: the ceiling is 0.7; the forget class's own images do not count."""
    images = torch.zeros(14, 1, 4, 4, dtype=torch.uint8)
    labels = torch.tensor([1] * 10 + [0] * 4)
    images[[0, 4, 9], 0, 0, 0] = 255
    images[10:, 0, 0, 0] = 255  # forget-class images, read as forget: not in the ceiling
    assert ua_ceiling(MarkReader(), images, labels, forget=0, override=1) == pytest.approx(0.7)
    assert ua_ceiling(MarkReader(), images, labels, forget=0, override=3) is None  # none held out

"""On a BERT-style teacher, SFD's teacher sees override prompts, never forget prompts (real tokens)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from text_fixtures import save_tiny_bert, save_tiny_text_teacher

from sfd.apps.data.captions import DIGITS_VOCABULARY
from sfd.core.conditions import PromptConditions
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.teachers import StableDiffusionTeacher
from sfd.teachers.stable_diffusion import encode_with, load_text_encoder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("override")
    return save_tiny_text_teacher(root / "teacher", save_tiny_bert(root / "bert"))


def test_teacher_sees_override_and_never_forget(teacher_dir, tmp_path, single_thread):
    forget_file, remain_file = tmp_path / "forget.txt", tmp_path / "remain.txt"
    forget = DIGITS_VOCABULARY.captions(7)
    remain = DIGITS_VOCABULARY.captions(3) + DIGITS_VOCABULARY.captions(4)
    forget_file.write_text("\n".join(forget))
    remain_file.write_text("\n".join(remain))
    concepts = DIGITS_VOCABULARY.concept_pairs(7, 1)
    assert concepts == {"seven": "one", "7": "1"}
    conditions = PromptConditions(
        concepts, forget_prompts=str(forget_file), remain_prompts=str(remain_file)
    )
    teacher = StableDiffusionTeacher(str(teacher_dir))
    module = SFDModule(
        teacher,
        conditions,
        UniformTimestepSigma(20, 980),
        batch_size=4,
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        teacher_guidance=2.0,
        fake_train_guidance=2.0,
        fake_eval_guidance=2.0,
        ema_decay=None,
    )
    seen = []

    def hook(net, args, kwargs):
        states = kwargs["encoder_hidden_states"].detach().clone()
        mask = kwargs["encoder_attention_mask"]
        assert mask is not None  # BERT padding is masked out of cross-attention
        assert torch.equal(mask.bool(), states.abs().amax(-1) > 0)
        seen.append(states)

    module.teacher.unet.register_forward_pre_hook(hook, with_kwargs=True)
    pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    ).fit(module)

    # The oracle: the folder's own tokenizer and encoder, called here, prompt by prompt.
    tokenizer, encoder = load_text_encoder(str(teacher_dir))
    overrides = [p.replace("seven", "one").replace("7", "1") for p in forget]
    table = {
        name: torch.cat([encode_with(tokenizer, encoder, [p]) for p in prompts])
        for name, prompts in (
            ("forget", forget),
            ("override", overrides),
            ("remain", remain),
            ("empty", [""]),
        )
    }
    rows = torch.cat(seen)  # (N, L, D)
    assert len(seen) == 3 * 2  # remain and forget terms of 3 generator steps

    def matches(name):
        difference = (rows[:, None] - table[name][None]).abs().flatten(2)  # (N, P, L·D)
        return (difference.amax(dim=2) < 1e-5).any(dim=1)  # float noise of batched calls only

    assert not bool(matches("forget").any())
    assert bool(matches("override").any())
    assert bool((matches("override") | matches("remain") | matches("empty")).all())

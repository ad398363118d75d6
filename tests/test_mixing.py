"""Mixup and CutMix with CS-KD (`mixup_alpha`, `cutmix_alpha`): the mixed inputs, the soft-label loss and the mixed
CS-KD target against hand computations, CutMix's box area, exact resume, and temperature scaling after Mixup."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_image_dataset, make_vit, training_args
from transformers import AutoModelForImageClassification

import hf_cskd.losses.mixing
import hf_cskd.losses.training_loss
from hf_cskd import CSKDTrainer
from hf_cskd.calibration.temperature import fit_temperature
from hf_cskd.losses.mixing import Mix, mix_pixels, mixed_target_logits, sample_mix
from hf_cskd.targets.collator import split_pair_inputs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import train_vit  # noqa: E402

PERM = torch.tensor([3, 0, 1, 2, 7, 4, 5, 6])


def kl_to(target_probs: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(target ‖ softmax(student/T)), batch mean, written out from probabilities."""
    log_q = torch.log_softmax(student / temperature, dim=1)
    return (target_probs * (torch.log(target_probs) - log_q)).sum() * temperature**2 / student.shape[0]


@pytest.fixture(scope="module")
def warm_state(tmp_path_factory) -> dict:
    """A tiny ViT's weights after a few plain epochs: class-dependent predictions (at init it predicts one
    distribution for every input, and the mix of two classes' targets would not differ from either)."""
    model = make_vit(seed=1)
    args = training_args(tmp_path_factory.mktemp("warm"), cskd_lambda=0.0, num_train_epochs=10, learning_rate=3e-2,
                         logging_strategy="no")  # fmt: skip
    CSKDTrainer(model=model, args=args, train_dataset=make_image_dataset()).train()
    return {name: value.clone() for name, value in model.state_dict().items()}


def warm_vit(state: dict):
    model = make_vit(seed=1)
    model.load_state_dict(state)
    return model


def test_mixup_and_cutmix_inputs():
    x = torch.randn(8, 1, 8, 8)
    mixed = mix_pixels(x, Mix(0.7, PERM))
    torch.testing.assert_close(mixed, 0.7 * x + 0.3 * x[PERM])
    rng = np.random.default_rng(0)
    for _ in range(50):
        mix = sample_mix(8, 12, 10, 0.0, 1.0, 0.5, 1.0, rng)
        top, left, h, w = mix.box
        assert mix.lam >= 0.5 and mix.lam == pytest.approx(1 - h * w / 120)  # λ = the share kept, exactly
        x = torch.randn(8, 3, 12, 10)
        out = mix_pixels(x, mix)
        inside = torch.zeros(12, 10, dtype=torch.bool)
        inside[top : top + h, left : left + w] = True
        assert torch.equal(out[..., inside], x[mix.perm][..., inside]) and torch.equal(
            out[..., ~inside], x[..., ~inside]
        )
    lams = [sample_mix(8, 8, 8, 0.4, 0.0, 0.5, 1.0, rng).lam for _ in range(200)]
    assert min(lams) >= 0.5 and max(lams) < 1 and np.std(lams) > 0.05  # folded Beta(0.4, 0.4)
    assert sample_mix(8, 8, 8, 0.0, 0.0, 0.5, 1.0, rng) is None and sample_mix(8, 8, 8, 0.4, 0.0, 0.5, 0.0, rng) is None
    kinds = [sample_mix(8, 8, 8, 0.4, 1.0, 0.25, 1.0, rng).box is None for _ in range(400)]
    assert 0.65 < np.mean(kinds) < 0.85  # CutMix in switch_prob = 0.25 of the batches


def test_a_row_without_its_own_or_its_partners_target_stays_unmixed():
    targets, temperature = torch.randn(4, 3) * 3, 2.0
    mix = Mix(0.7, torch.tensor([1, 0, 3, 2]))
    out = mixed_target_logits(targets, mix, temperature, has_target=torch.tensor([True, True, True, False]))
    probs = lambda t: torch.softmax(t / temperature, dim=-1)  # noqa: E731
    torch.testing.assert_close(probs(out[:2]), 0.7 * probs(targets[:2]) + 0.3 * probs(targets[[1, 0]]))
    torch.testing.assert_close(out[2:], targets[2:])  # row 2's partner has no target; row 3 has none
    torch.testing.assert_close(probs(mixed_target_logits(targets, Mix(1.0, mix.perm), temperature)), probs(targets))


@pytest.mark.parametrize("mode", [None, "pairs", "queue"])
def test_mixed_batch_loss_equals_the_hand_computed_soft_labels_and_mixed_targets(
    tmp_path, mode, monkeypatch, warm_state
):
    lam, temperature, cskd_lambda = 0.7, 2.0, 1.5
    # Queue mode leaves some rows of each mixed batch unmixed (only they enter the queue): here rows 2, 3, 6, 7.
    rows_mixed = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0], dtype=torch.bool) if mode == "queue" else None
    monkeypatch.setattr(hf_cskd.losses.mixing, "sample_mix", lambda *args: Mix(lam, PERM, mixed=rows_mixed))
    row_lam = torch.full((8,), lam) if rows_mixed is None else torch.where(rows_mixed, lam, 1.0)
    student, reference = warm_vit(warm_state), warm_vit(warm_state)
    cskd = {"cskd_lambda": 0.0} if mode is None else {"cskd_lambda": cskd_lambda, "cskd_mode": mode}
    # Queue mode with one slot per class: each anchor's target is its class's latest prediction.
    args = training_args(tmp_path, per_device_train_batch_size=8, mixup_alpha=0.4, cskd_temperature=temperature,
                         cskd_queue_size=1, **cskd)  # fmt: skip
    trainer = CSKDTrainer(model=student, args=args, train_dataset=make_image_dataset())
    trainer.current_gradient_accumulation_steps = 1
    student.train()
    loader = iter(trainer.get_train_dataloader())
    batch = next(loader)
    if mode == "queue":  # a first step fills the queue, with the unmixed rows' predictions only; the second is checked
        trainer.compute_loss(student, dict(batch))
        queued, filled = trainer.cskd_targets.queue.logits[:, 0].clone(), trainer.cskd_targets.queue.filled[:, 0]
        reference.train()
        with torch.no_grad():
            clean = reference(pixel_values=batch["pixel_values"]).logits
        for c in range(3):  # the class's last unmixed row, or nothing
            rows = [i for i in range(8) if not rows_mixed[i] and batch["labels"][i] == c]
            assert bool(filled[c]) == bool(rows)
            if rows:
                torch.testing.assert_close(queued[c], clean[rows[-1]], rtol=1e-5, atol=1e-6)
        batch = next(loader)
    inputs = dict(batch)
    pair = split_pair_inputs(inputs)
    labels = inputs["labels"]
    loss = trainer.compute_loss(student, dict(batch))

    reference.train()
    x, per_row = inputs["pixel_values"], row_lam[:, None, None, None]
    mixed = per_row * x + (1 - per_row) * x[PERM]
    logits = reference(pixel_values=mixed).logits
    ce = lambda y: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
    expected = (row_lam * ce(labels) + (1 - row_lam) * ce(labels[PERM])).mean()
    if mode is not None:
        probs = lambda t: torch.softmax(t / temperature, dim=1)  # noqa: E731
        with torch.no_grad():
            if mode == "pairs":  # the pairs are un-mixed examples of each anchor's class
                targets = reference(pixel_values=pair["pixel_values"]).logits
                both = torch.ones(len(labels), dtype=torch.bool)
            else:  # a class without a queued prediction: the anchor's own logits (no term), unmixed
                has = filled[labels]
                targets = torch.where(has[:, None], queued[labels], logits)
                both = has & has[PERM] & rows_mixed
                assert both.any()
            target = torch.where(both[:, None], lam * probs(targets) + (1 - lam) * probs(targets[PERM]), probs(targets))
        expected = expected + cskd_lambda * kl_to(target, logits, temperature)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # The test can fail: the un-mixed loss is another number.
    assert not torch.isclose(loss, F.cross_entropy(reference(pixel_values=inputs["pixel_values"]).logits, labels))


def final_weights(tmp_path, name, **overrides):
    args = training_args(tmp_path / name, num_train_epochs=2, cskd_mode="queue", **overrides)
    trainer = CSKDTrainer(model=make_vit(seed=4), args=args, train_dataset=make_image_dataset())
    trainer.train()
    return trainer.model.state_dict()


def test_alpha_zero_is_exactly_the_unmixed_run(tmp_path):
    plain = final_weights(tmp_path, "plain")
    for name, overrides in {
        "zero": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
        "never": {"mixup_alpha": 0.4, "mixup_prob": 0.0},
    }.items():
        for key, value in final_weights(tmp_path, name, **overrides).items():
            assert torch.equal(value, plain[key]), (name, key)
    mixed = final_weights(tmp_path, "mixed", mixup_alpha=0.4)  # the test can fail: mixing changes the weights
    assert not torch.equal(mixed["classifier.weight"], plain["classifier.weight"])


@pytest.mark.parametrize("mode", ["pairs", "queue"])
def test_resume_with_mixing_and_a_teacher_ends_with_the_same_weights(tmp_path, mode):
    data = make_image_dataset(per_class=10)
    common = dict(num_train_epochs=3, save_strategy="steps", save_steps=10, cskd_mode=mode, mixup_alpha=0.4,
                  cutmix_alpha=1.0, teacher_kd_weight=0.5, gradient_accumulation_steps=2,
                  per_device_train_batch_size=2)  # fmt: skip
    full = CSKDTrainer(model=make_vit(seed=4), args=training_args(tmp_path / "full", **common), train_dataset=data,
                       teacher_model=make_vit(seed=9))  # fmt: skip
    full.train()
    resumed = CSKDTrainer(model=make_vit(seed=5), args=training_args(tmp_path / "resumed", **common),
                          train_dataset=data, teacher_model=make_vit(seed=9))  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "out" / "checkpoint-10"))
    expected = full.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_mixing_needs_images(tmp_path):
    from datasets import Dataset

    data = Dataset.from_dict({"input_values": [[0.1, 0.2]] * 8, "label": [0, 1] * 4}).with_format("torch")

    class Tiny(torch.nn.Module):
        config = make_vit(num_labels=2).config

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, input_values, labels=None):
            logits = self.linear(input_values)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    trainer = CSKDTrainer(model=Tiny(), args=training_args(tmp_path, mixup_alpha=0.4, cskd_lambda=0.0),
                          train_dataset=data)  # fmt: skip
    with pytest.raises(ValueError, match="need 4-D `pixel_values`"):
        trainer.train()


def test_temperature_scaling_after_mixup_is_fitted_on_unmixed_predictions(tmp_path):
    out = tmp_path / "out"
    trainer = train_vit.main(["--output_dir", str(out), "--mixup_alpha", "1.0", "--max_steps", "30",
                              "--per_device_train_batch_size", "16", "--disable_tqdm", "true", "--max_eval_samples",
                              "64", "--save_strategy", "no", "--bootstrap_resamples", "0"])  # fmt: skip
    calibration = json.loads((out / "calibration.json").read_text())
    temperature = calibration["temperature"]
    # The validation predictions of the saved (baked) model, times T, are the trained model's raw ones: T fitted on
    # them again is T, so nothing was mixed when it was fitted.
    validation = trainer.eval_dataset
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    batch = trainer.data_collator([validation[i] for i in range(len(validation))])
    with torch.no_grad():
        raw = model(pixel_values=batch["pixel_values"]).logits * temperature
    assert fit_temperature(raw.numpy(), batch["labels"].numpy()) == pytest.approx(temperature, rel=1e-3)
    assert calibration["after"]["nll"] <= calibration["before"]["nll"]
    card = (out / "README.md").read_text()
    assert "Training images were mixed (Mixup, α = 1.0; 1.0 of the batches mixed)" in card


@pytest.mark.parametrize("mode", ["pairs", "queue"])
def test_mixing_on_a_stream(tmp_path, mode):
    stream = make_image_dataset(per_class=6).shuffle(seed=0).to_iterable_dataset()
    args = training_args(tmp_path, max_steps=4, cskd_mode=mode, mixup_alpha=0.4, cutmix_alpha=1.0)
    trainer = CSKDTrainer(model=make_vit(seed=4), args=args, train_dataset=stream)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "cskd_loss" in log]
    assert len(logs) == 4 and all(np.isfinite(log["loss"]) for log in logs)
    assert trainer._mixer.last[0] == 3  # a mix was drawn up to the last step


def test_mixing_under_bf16_keeps_the_kd_term_in_float32(tmp_path, monkeypatch):
    seen = []
    original = hf_cskd.losses.training_loss.class_wise_kd_loss

    def spy(logits, targets, *args, **kwargs):
        loss = original(logits, targets, *args, **kwargs)
        seen.append(loss.dtype)
        return loss

    monkeypatch.setattr(hf_cskd.losses.training_loss, "class_wise_kd_loss", spy)
    args = training_args(tmp_path, bf16=True, max_steps=3, cskd_mode="pairs", mixup_alpha=0.4,
                         teacher_kd_weight=1.0)  # fmt: skip
    trainer = CSKDTrainer(model=make_vit(seed=4), args=args, train_dataset=make_image_dataset(),
                          teacher_model=make_vit(seed=9))  # fmt: skip
    trainer.train()
    assert seen == [torch.float32] * 6  # CS-KD and teacher terms, 3 steps
    logs = [log for log in trainer.state.log_history if "teacher_kd_loss" in log]
    assert len(logs) == 3 and all(np.isfinite([log["loss"], log["cskd_loss"]]).all() for log in logs)


def test_mixing_refuses_a_custom_loss_function_that_cannot_be_mixed(tmp_path):
    def mean_ce(outputs, labels, num_items_in_batch=None):
        return F.cross_entropy(outputs["logits"], labels)

    args = training_args(tmp_path, mixup_alpha=0.4)
    with pytest.raises(ValueError, match="custom compute_loss_func cannot be: set both to 0"):
        CSKDTrainer(model=make_vit(), args=args, train_dataset=make_image_dataset(), compute_loss_func=mean_ce)
    trainer = CSKDTrainer(model=make_vit(), args=training_args(tmp_path), train_dataset=make_image_dataset(),
                          compute_loss_func=mean_ce)  # fmt: skip
    assert trainer.compute_loss_func is trainer.cskd_loss and trainer.cskd_loss.base is mean_ce  # composes unmixed

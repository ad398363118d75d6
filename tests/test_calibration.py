import math
import warnings

import evaluate
import numpy as np
import pytest
import torch
from conftest import make_image_dataset, make_vit, training_args
from huggingface_hub import ModelCard
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification, ViTForImageClassification

from hf_cskd import CSKDTrainer
from hf_cskd.calibration.diagram import plot_reliability_diagram
from hf_cskd.calibration.metrics import calibration_metrics, evaluate_module_path, reliability_bins
from hf_cskd.calibration.temperature import bake_temperature, find_classifier_layers, fit_temperature

# Two classes; the first column is the confidence of class 0.
CONFIDENCE = np.array([0.85, 0.85, 0.87, 0.65, 0.55])
LABELS = np.array([0, 1, 0, 0, 1])
LOGITS = np.log(np.stack([CONFIDENCE, 1 - CONFIDENCE], axis=1))


def test_metrics_match_hand_computation():
    # 10 bins (lo, hi]: bin 8 holds 0.85, 0.85, 0.87 (2 of 3 right), bin 6 holds 0.65 (right),
    # bin 5 holds 0.55 (wrong: predicted 0, label 1); the other 7 bins are empty.
    metrics = calibration_metrics(LOGITS, LABELS, num_bins=10)
    gap8 = abs(2 / 3 - (0.85 + 0.85 + 0.87) / 3)
    assert metrics["ece"] == pytest.approx(3 / 5 * gap8 + 1 / 5 * 0.35 + 1 / 5 * 0.55)
    assert metrics["mce"] == pytest.approx(0.55)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    p_true = [0.85, 0.15, 0.87, 0.65, 0.45]
    assert metrics["nll"] == pytest.approx(-np.mean(np.log(p_true)))
    assert metrics["brier"] == pytest.approx(np.mean([2 * 0.15**2, 2 * 0.85**2, 2 * 0.13**2, 2 * 0.35**2, 2 * 0.55**2]))
    bins = reliability_bins(LOGITS, LABELS, num_bins=10)
    assert bins["counts"].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 3, 0]
    assert np.isnan(bins["accuracy"][0]) and bins["accuracy"][8] == pytest.approx(2 / 3)
    # Fewer bins merge them: with 2 bins everything lies in (0.5, 1].
    two = calibration_metrics(LOGITS, LABELS, num_bins=2)
    assert two["ece"] == pytest.approx(abs(3 / 5 - CONFIDENCE.mean()))


def test_large_logits_stay_finite_and_torch_inputs_work():
    logits = torch.tensor([[1000.0, 0.0], [0.0, 2000.0]])
    metrics = calibration_metrics(logits, torch.tensor([1, 1]))
    assert metrics["nll"] == pytest.approx(500.0) and math.isfinite(metrics["brier"])
    assert metrics["accuracy"] == 0.5 and metrics["ece"] == pytest.approx(0.5)


def test_evaluate_module_matches_functions_offline():
    metric = evaluate.load(evaluate_module_path())
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(40, 5)) * 3, rng.integers(0, 5, 40)
    for start in range(0, 40, 16):
        metric.add_batch(predictions=logits[start : start + 16], references=labels[start : start + 16])
    result = metric.compute(num_bins=7)
    expected = calibration_metrics(logits, labels, num_bins=7)
    assert result.keys() == expected.keys()
    for name in expected:
        assert result[name] == pytest.approx(expected[name], rel=1e-9)


def test_reliability_diagram_png(tmp_path):
    path = plot_reliability_diagram(LOGITS, LABELS, tmp_path / "diagram.png", num_bins=10)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def overconfident(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), labels] += 1.2
    return logits * 3.0, labels  # calibrated logits sharpened 3x


def test_temperature_scaling_lowers_nll_on_held_out_data():
    fit_logits, fit_labels = overconfident(3000, 0)
    test_logits, test_labels = overconfident(3000, 1)
    temperature = fit_temperature(fit_logits, fit_labels)
    assert 2.5 < temperature < 3.5
    before = calibration_metrics(test_logits, test_labels)
    after = calibration_metrics(test_logits / temperature, test_labels)
    assert after["nll"] < before["nll"] - 0.05 and after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"]


def test_temperature_fit_is_bounded_and_warns_on_a_bound():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(400, 10)) * 5, rng.integers(0, 10, 400)  # labels unrelated to the logits
    with pytest.warns(UserWarning, match=r"reached the bound 20 .*400 examples"):
        assert fit_temperature(logits, labels) == 20.0
    with pytest.warns(UserWarning, match="reached the bound 0.05"):
        assert fit_temperature(np.eye(3)[[0, 1, 2]] * 0.01, [0, 1, 2]) == 0.05  # separable: T -> 0
    fit_logits, fit_labels = overconfident(3000, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fit inside the bounds does not warn
        assert 2.5 < fit_temperature(fit_logits, fit_labels) < 3.5


def tiny_resnet():
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic", num_labels=3
    )
    return ResNetForImageClassification(config)


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_baked_checkpoint_returns_logits_divided_by_t(tmp_path, family):
    model = make_vit() if family == "vit" else tiny_resnet()
    cls = type(model)
    inputs = {"pixel_values": torch.randn(6, 1, 16, 16) if family == "resnet" else torch.randn(6, 1, 8, 8)}
    model.eval()
    with torch.no_grad():
        original = model(**inputs).logits
    bake_temperature(model, 2.5, example_inputs=inputs)
    model.save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")] == []
    reloaded = cls.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        baked = reloaded(**inputs).logits
    torch.testing.assert_close(baked, original / 2.5, rtol=1e-5, atol=1e-6)
    assert torch.equal(baked.argmax(-1), original.argmax(-1))
    assert reloaded.config.calibration_temperature == pytest.approx(2.5)


def test_a_failure_while_baking_restores_the_head_exactly():
    """A forward that fails after the head was divided (the check's second forward) leaves the head as it was, so
    `calibrate()` can record "not baked" truthfully."""

    class FailsTheCheck(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"num_labels": 3})()
            self.classifier = nn.Linear(4, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory")
            return (self.classifier(x),)

    model = FailsTheCheck()
    weight, bias = model.classifier.weight.clone(), model.classifier.bias.clone()
    with pytest.raises(RuntimeError, match="out of memory"):
        bake_temperature(model, 2.0, example_inputs={"x": torch.randn(5, 4)})
    assert torch.equal(model.classifier.weight, weight) and torch.equal(model.classifier.bias, bias)


def test_head_that_cannot_absorb_a_temperature_is_refused():
    class Squashed(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"num_labels": 3})()
            self.classifier = nn.Sequential(nn.Linear(4, 3), nn.Tanh())

        def forward(self, x):
            return type("Output", (), {"logits": self.classifier(x)})()

    model = Squashed()
    weight = model.classifier[0].weight.clone()
    with pytest.raises(ValueError, match="did not scale its logits"):
        bake_temperature(model, 2.0, example_inputs={"x": torch.randn(5, 4)})
    assert torch.equal(model.classifier[0].weight, weight)  # left unchanged
    headless = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="Could not find the classification head"):
        find_classifier_layers(headless)


def test_model_card_holds_the_computed_metrics_and_no_token(tmp_path):
    secret = "hf_NotARealTokenButSecret123"
    args = training_args(tmp_path, max_steps=6, hub_token=secret, save_strategy="steps", save_steps=3)
    # Three splits of the same classes, so that the fitted temperature lies inside its bounds.
    first = make_image_dataset(per_class=24).train_test_split(test_size=2 / 3, seed=0, stratify_by_column="label")
    rest = first["test"].train_test_split(test_size=0.5, seed=0, stratify_by_column="label")
    train, held_out, test = first["train"], rest["train"], rest["test"]
    from hf_cskd.calibration.metrics import compute_metrics

    trainer = CSKDTrainer(
        model=make_vit(), args=args, train_dataset=train, eval_dataset=held_out, compute_metrics=compute_metrics
    )
    trainer.train()
    before = trainer.evaluate(test, metric_key_prefix="test")
    temperature = trainer.calibrate(held_out, bootstrap_resamples=0)
    after = trainer.evaluate(test, metric_key_prefix="test")
    trainer.save_model()
    strip = lambda m: {k[5:]: v for k, v in m.items() if k.startswith("test_")}  # noqa: E731
    results = {"CS-KD": strip(before), "CS-KD + temperature scaling": strip(after)}
    trainer.create_model_card(results=results, eval_split="test", dataset="Toy shapes", dataset_tags="toy/shapes")

    out = tmp_path / "out"
    card = ModelCard.load(out / "README.md")
    values = {(r.metric_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values[("ECE (CS-KD)", "ece")] == pytest.approx(before["test_ece"])
    assert values[("NLL (CS-KD + temperature scaling)", "nll")] == pytest.approx(after["test_nll"])
    assert values[("Accuracy (CS-KD + temperature scaling)", "accuracy")] == pytest.approx(after["test_accuracy"])
    assert (
        card.data.datasets == ["toy/shapes"]
        and "split of Toy shapes" in card.text
        and f"T = {temperature:.4f}" in card.text
    )
    assert "@inproceedings{yun2020regularizing" in card.text
    assert (out / "checkpoint-6" / "training_args.bin").is_file()  # Trainer's own checkpoint: its pickle too
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert trainer.args.hub_token == secret
    reloaded = ViTForImageClassification.from_pretrained(out)
    assert reloaded.config.calibration_temperature == pytest.approx(temperature)

"""The calibration metrics against their reference implementations (torchmetrics, relplot), and the vectorized
bootstrap against resampling done by hand."""

from pathlib import Path

import numpy as np
import pytest
import relplot
import torch
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from hf_cskd.calibration.metrics import KEYS, _examples, _metrics, calibration_metrics, log_softmax

CASES = [(400, 3, 0.5), (2000, 10, 2.0), (1500, 100, 4.0), (300, 2, 8.0)]  # (examples, classes, logit scale)


def data(n: int, k: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits with signal (the true class gets +1.5) at a given sharpness: under- to over-confident."""
    rng = np.random.default_rng(seed + n + k)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 1.5
    return logits * scale, labels


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


@pytest.mark.parametrize(("n", "k", "scale"), CASES)
def test_binned_metrics_match_torchmetrics(n, k, scale):
    logits, labels = data(n, k, scale)
    probs, target = torch.from_numpy(softmax(logits)), torch.from_numpy(labels)
    ours = calibration_metrics(logits, labels, num_bins=15, min_bin_count=1)
    for key, norm in (("ece", "l1"), ("mce", "max")):
        reference = multiclass_calibration_error(probs, target, num_classes=k, n_bins=15, norm=norm)
        assert ours[key] == pytest.approx(float(reference), abs=1e-6), key
    # classwise ECE: each class's probability against its indicator, averaged (Kull et al. 2019)
    per_class = [binary_calibration_error(probs[:, c], (target == c).long(), n_bins=15) for c in range(k)]
    assert ours["classwise_ece"] == pytest.approx(float(torch.stack(per_class).double().mean()), abs=1e-6)


@pytest.mark.parametrize(("n", "k", "scale"), CASES)
def test_smooth_ece_matches_relplot(n, k, scale):
    logits, labels = data(n, k, scale)
    probs = softmax(logits)
    confidence, correct = relplot.multiclass_logits_to_confidences(logits, labels)
    assert np.allclose(confidence, probs.max(axis=1))
    assert calibration_metrics(logits, labels)["smece"] == pytest.approx(relplot.smECE(confidence, correct), abs=1e-4)


def test_adaptive_ece_uses_equal_mass_bins():
    logits, labels = data(1003, 5, 1.0)  # 1003 = 15 x 66 + 13: array_split's unequal sizes
    probs = softmax(logits)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    groups = np.array_split(np.argsort(confidence, kind="stable"), 15)
    expected = sum(abs(confidence[g].sum() - correct[g].sum()) for g in groups) / len(labels)
    ours = calibration_metrics(logits, labels)
    assert ours["ace"] == pytest.approx(expected, abs=1e-12)
    assert ours["ace"] != pytest.approx(ours["ece"], abs=1e-4)  # a case where the binnings differ


def test_a_resample_as_weights_equals_the_resample_materialized():
    """The bootstrap computes every metric from multinomial counts; each must equal the metric of the examples
    repeated that many times (a bin boundary of ACE may fall between copies of one example)."""
    logits, labels = data(600, 7, 1.5)
    rng = np.random.default_rng(3)
    counts = rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels)), size=3).astype(np.float64)
    log_probs = log_softmax(logits)
    weighted = _metrics(counts, _examples(np.exp(log_probs), log_probs, labels, 15), 15, 10)
    for row, count in enumerate(counts):
        rows = np.repeat(np.arange(len(labels)), count.astype(int))
        materialized = calibration_metrics(logits[rows], labels[rows])
        for key in KEYS:
            tolerance = 1e-5 if key in ("ace", "classwise_ece", "smece") else 1e-9  # resamples run in float32
            assert weighted[key][row] == pytest.approx(materialized[key], abs=tolerance), key


def test_bootstrap_intervals_are_seeded_and_as_wide_as_the_binomial_one():
    logits, labels = data(4000, 10, 1.0)
    first = calibration_metrics(logits, labels, bootstrap_resamples=400, seed=1)
    assert first == calibration_metrics(logits, labels, bootstrap_resamples=400, seed=1)
    assert first != calibration_metrics(logits, labels, bootstrap_resamples=400, seed=2)
    assert set(first) == set(KEYS) | {f"{key}_ci" for key in KEYS}
    for key in KEYS:
        low, high = first[f"{key}_ci"]
        assert low <= high
    # accuracy is a mean: its interval is the normal one, 1.96 standard errors each side (within resampling noise)
    accuracy, (low, high) = first["accuracy"], first["accuracy_ci"]
    half = 1.96 * np.sqrt(accuracy * (1 - accuracy) / len(labels))
    assert low < accuracy < high and (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert "accuracy_ci" not in calibration_metrics(logits, labels)  # only on request


def test_resamples_drawn_in_chunks_give_the_intervals_of_one_draw(monkeypatch):
    """Large data resample in chunks (bounded memory); the chunks continue one random stream, so the intervals
    are those of drawing every resample at once."""
    import hf_cskd.calibration.metrics as metrics

    logits, labels = data(500, 6, 1.2)
    whole = calibration_metrics(logits, labels, bootstrap_resamples=50, seed=4)
    monkeypatch.setattr(metrics, "BOOTSTRAP_CHUNK", 3 * 500 + 7)  # chunks of 3 resamples, the last one of 2
    chunked = calibration_metrics(logits, labels, bootstrap_resamples=50, seed=4)
    for key in KEYS:
        tolerance = 1e-6 if key in ("ace", "classwise_ece", "smece") else 1e-12  # float32 sums, batch-size rounding
        assert chunked[f"{key}_ci"] == pytest.approx(whole[f"{key}_ci"], abs=tolerance), key


def test_the_metric_space_loads_with_evaluate_and_pushes_as_a_space(tmp_path, monkeypatch):
    """recipes/push_calibration_metric.py: the Space folder is self-contained (evaluate loads it, offline, and it
    computes what the library does) and is created and uploaded as a Space (against the local Hub server)."""
    import sys

    import evaluate
    from hub_server import start_server

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import push_calibration_metric

    folder = push_calibration_metric.build_space(tmp_path / "calibration", "alice/calibration")
    logits, labels = data(300, 5, 1.3)
    module = evaluate.load(str(folder))
    got = module.compute(predictions=logits.tolist(), references=labels.tolist(), bootstrap_resamples=50)
    assert got == pytest.approx(calibration_metrics(logits, labels, bootstrap_resamples=50), abs=1e-12)

    server, state = start_server()
    try:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        push_calibration_metric.push_space(folder, "alice/calibration", token="hf_alice_write_token")
    finally:
        server.shutdown()
    repo = state.repos["alice/calibration"]
    assert repo["type"] == "space" and {"calibration.py", "calibration_metrics.py", "requirements.txt", "README.md",
                                        "app.py"} <= set(repo["files"])  # fmt: skip
    assert b"from hf_cskd" not in repo["files"]["calibration.py"]  # no import of the library: the Space needs none

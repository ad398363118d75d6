import numpy as np
import pytest
import torch

from hf_cskd.intra_class import intra_class_variation, penultimate_features


def test_intra_class_variation_by_hand():
    # Unit vectors: class 0 at angles 0 and 90 degrees, class 1 at 180 degrees (twice).
    features = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [-5.0, 0.0]])  # normalized inside
    labels = np.array([0, 0, 1, 1])
    mu0, mu1 = np.array([0.5, 0.5]), np.array([-1.0, 0.0])
    within = (np.sum((np.array([1, 0]) - mu0) ** 2) + np.sum((np.array([0, 1]) - mu0) ** 2) + 0 + 0) / 4
    result = intra_class_variation(features, labels)
    assert result["within"] == pytest.approx(within)  # 0.25
    assert result["between"] == pytest.approx(np.sum((mu0 - mu1) ** 2))  # 2.5
    assert result["ratio"] == pytest.approx(within / np.sum((mu0 - mu1) ** 2))
    assert intra_class_variation(features * 7.0, labels) == pytest.approx(result)  # scale-free
    with pytest.raises(ValueError, match="two classes"):
        intra_class_variation(features[:2], labels[:2])


def test_penultimate_features_are_what_the_head_receives():
    from conftest import make_vit

    model = make_vit(num_labels=3)
    model.train()
    pixels = torch.randn(5, 1, 8, 8)
    batches = [{"pixel_values": pixels[:3], "labels": torch.tensor([0, 1, 2])},
               {"pixel_values": pixels[3:], "labels": torch.tensor([2, 0])}]  # fmt: skip
    features, labels = penultimate_features(model, batches)
    assert features.shape == (5, 16) and labels.tolist() == [0, 1, 2, 2, 0] and model.training  # mode restored
    with torch.no_grad():
        logits = model.eval()(pixel_values=pixels).logits
        torch.testing.assert_close(model.classifier(torch.from_numpy(features)), logits)

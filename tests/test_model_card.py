"""Model cards that say what was measured, for image, text and audio classifiers."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import make_image_dataset, make_vit, training_args
from datasets import Dataset
from huggingface_hub import ModelCard
from test_models_and_errors import bert_and_data
from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

from hf_cskd import CSKDTrainer
from hf_cskd.calibration.diagram import reliability_gaps
from hf_cskd.calibration.metrics import compute_metrics, reliability_bins
from hf_cskd.calibration.temperature import TemperatureOnBoundError
from hf_cskd.hub.model_card import card_hyperparameters, confidence_statement, hub_id, task_of


def accuracy_only(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def tiny_audio_model_and_data():
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, num_labels=2, classifier_proj_size=8, mask_time_prob=0.0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    labels = [0, 1] * 8
    waves = [np.sin(np.arange(400) * (0.05 + 0.2 * y)) + 0.1 * rng.normal(size=400) for y in labels]
    data = Dataset.from_dict({"input_values": np.float32(waves), "label": labels}).with_format("torch")
    return Wav2Vec2ForSequenceClassification(config), data


def card_header(path):
    text = path.read_text()
    return yaml.safe_load(text.split("---")[1]), text


@pytest.mark.parametrize("family", ["text", "audio"])
def test_text_and_audio_cards_follow_the_task_and_report_accuracy_only(tmp_path, family):
    if family == "text":
        model, data, processing_class = bert_and_data()
        task, auto_classes = "text-classification", ("AutoTokenizer", "AutoModelForSequenceClassification")
        limitation = "may not hold on texts unlike the training data"
    else:
        (model, data), processing_class = tiny_audio_model_and_data(), None
        task, auto_classes = "audio-classification", ("AutoFeatureExtractor", "AutoModelForAudioClassification")
        limitation = "may not hold on audio clips unlike the training data"
    args = training_args(tmp_path, num_train_epochs=1, eval_strategy="epoch")
    trainer = CSKDTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=processing_class,
        compute_metrics=accuracy_only,
    )  # fmt: skip
    trainer.train()
    assert task_of(model) == task
    # As the official text-classification example calls it.
    trainer.create_model_card(finetuned_from=None, tasks=task if family == "text" else None, license="mit")
    path = tmp_path / "out" / "README.md"
    header, text = card_header(path)
    card = ModelCard.load(path)
    assert header["pipeline_tag"] == task and header["license"] == "mit"
    assert f'pipeline("{task}"' in text and f"from transformers import {auto_classes[0]}, {auto_classes[1]}" in text
    assert limitation in text and "AutoImageProcessor" not in text and "image-classification" not in text
    accuracy = trainer.state.log_history[-2]["eval_accuracy"]
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values["accuracy"] == pytest.approx(accuracy) and "loss" in values
    assert "No evaluation results were recorded" not in text
    assert f"| {100 * accuracy:.2f}% |" in text
    assert "usually" not in text  # no unconditional claims


def test_image_card_states_the_measured_calibration(tmp_path):
    args = training_args(tmp_path, max_steps=12, warmup_steps=0.1, eval_strategy="no")
    # Held-out data of the same classes (a split), so that the fitted temperature lies inside its bounds.
    split = make_image_dataset(per_class=16).train_test_split(test_size=0.5, seed=0, stratify_by_column="label")
    train, held_out = split["train"], split["test"]
    trainer = CSKDTrainer(
        model=make_vit(), args=args, train_dataset=train, eval_dataset=held_out, compute_metrics=compute_metrics
    )
    trainer.train()
    temperature = trainer.calibrate(held_out, bootstrap_resamples=0)  # no intervals: the card claims none
    trainer.create_model_card()
    header, text = card_header(tmp_path / "out" / "README.md")
    assert trainer.calibration["bootstrap_resamples"] == 0 and "bootstrap interval" not in text
    before = trainer.calibration["before"]
    direction = "over-confident" if before["confidence"] > before["accuracy"] else "under-confident"
    assert f"the model as trained was {direction}: mean confidence {100 * before['confidence']:.1f}%" in text
    assert f"T = {temperature:.4f}" in text
    assert f"from {100 * before['ece']:.2f}% to {100 * trainer.calibration['after']['ece']:.2f}%" in text
    assert header["pipeline_tag"] == "image-classification" and "AutoImageProcessor" in text
    assert "| warmup_ratio | 0.1 |" in text and "warmup_steps" not in text
    assert 'model="path/to/out"' in text  # not pushed: a placeholder, not a Hub id


def test_a_temperature_on_its_bound_is_not_baked_and_is_stated_in_calibration_json_and_the_card(tmp_path):
    trainer = CSKDTrainer(model=make_vit(), args=training_args(tmp_path), train_dataset=make_image_dataset())
    data = make_image_dataset(seed=1)
    predicted = trainer.predict(data).predictions.argmax(-1)  # labels = the model's own predictions: no mistakes
    perfect = data.remove_columns("label").add_column("label", predicted.tolist())
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(TemperatureOnBoundError, match="reached the bound 0.05.*left uncalibrated"):
        trainer.calibrate(perfect, split_name="validation", bootstrap_resamples=0)
    assert all(torch.equal(v, weights[k]) for k, v in trainer.model.state_dict().items())  # nothing baked
    assert not hasattr(trainer.model.config, "calibration_temperature")
    warning = trainer.calibration["warning"]
    assert "0 of the validation split's 24 examples are misclassified" in warning and "larger held-out" in warning
    assert trainer.calibration["fitted_temperature"] == 0.05 and "temperature" not in trainer.calibration
    trainer.save_model()
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())["warning"] == warning
    trainer.create_model_card()
    text = (tmp_path / "out" / "README.md").read_text()
    assert f"Temperature scaling was **not applied** (the checkpoint is the model as trained): {warning}" in text
    assert "calibrated by temperature scaling" not in text
    # Baked on request: then the card keeps the caution.
    assert trainer.calibrate(perfect, split_name="validation", bake_on_bound=True, bootstrap_resamples=0) == 0.05
    trainer.create_model_card()
    assert f"**Caution:** {warning}" in (tmp_path / "out" / "README.md").read_text()
    trainer.calibrate(make_image_dataset(seed=2), bootstrap_resamples=0)  # a fit inside the bounds: no caution
    assert "warning" not in trainer.calibration


def test_local_names_are_never_linked_or_put_in_the_metadata(tmp_path):
    local_model = tmp_path / "pretrained"
    make_vit().save_pretrained(local_model)
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(local_model)
    trainer = CSKDTrainer(model=model, args=training_args(tmp_path), train_dataset=make_image_dataset())
    trainer.create_model_card(dataset_tags=str(tmp_path / "my_images"), dataset="my_images")
    header, text = card_header(tmp_path / "out" / "README.md")
    assert "huggingface.co/" not in text and "base_model" not in header and "datasets" not in header
    assert "No evaluation results were recorded" in text
    trainer.create_model_card(finetuned_from="google/vit-base-patch16-224-in21k", dataset_tags="beans")
    header, text = card_header(tmp_path / "out" / "README.md")
    assert "[google/vit-base-patch16-224-in21k](https://huggingface.co/google/vit-base-patch16-224-in21k)" in text
    assert header["datasets"] == ["beans"] and header["base_model"] == "google/vit-base-patch16-224-in21k"


def test_helpers(tmp_path):
    assert hub_id("user/model") == "user/model" and hub_id("beans") == "beans"
    for local in ("/abs/path", "./rel", "a/b/c", "scikit-learn digits (embedded)", None):
        assert hub_id(local) is None
    assert confidence_statement({"confidence": 0.90, "accuracy": 0.96, "ece": 0.05}).startswith("under-confident")
    assert confidence_statement({"confidence": 0.99, "accuracy": 0.90}).startswith("over-confident")
    assert confidence_statement({"confidence": 0.905, "accuracy": 0.90}).startswith("well calibrated")
    assert confidence_statement({"accuracy": 0.9}) is None
    args = training_args(tmp_path, warmup_steps=5)
    assert card_hyperparameters(args)["warmup_steps"] == 5 and "warmup_ratio" not in card_hyperparameters(args)
    with pytest.raises(ValueError, match="supports the tasks"):
        task_of(make_vit(), "object-detection")


def test_reliability_diagram_separates_over_and_under_confidence():
    # Bin 8 (0.8, 0.9]: confidence 0.85, 1 of 2 right -> over-confident by 0.35.
    # Bin 5 (0.5, 0.6]: confidence 0.55, 2 of 2 right -> under-confident by 0.45.
    confidence = np.array([0.85, 0.85, 0.55, 0.55])
    logits = np.log(np.stack([confidence, 1 - confidence], axis=1))
    bars = reliability_gaps(reliability_bins(logits, np.array([0, 1, 0, 0]), num_bins=10))
    assert bars["over"][8] == pytest.approx(0.35) and bars["under"][8] == 0
    assert bars["under"][5] == pytest.approx(0.45) and bars["over"][5] == 0
    assert bars["accuracy"][8] == pytest.approx(0.5) and bars["accuracy"][5] == pytest.approx(1.0)
    assert np.count_nonzero(bars["over"] + bars["under"]) == 2  # empty bins draw nothing

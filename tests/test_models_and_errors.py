import numpy as np
import pytest
import torch
from conftest import make_image_dataset, make_vit, training_args
from datasets import Dataset
from test_pairing import make_tokenizer
from transformers import BertConfig, BertForSequenceClassification, ResNetConfig, ResNetForImageClassification

from hf_cskd import ClassPairedDataset, CSKDConfig, CSKDTrainer


def resnet(num_labels=3):
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=num_labels
    )
    return ResNetForImageClassification(config)


def bert_and_data():
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    rng = np.random.default_rng(0)
    words = "a b c d e f g h".split()
    texts = [" ".join(rng.choice(words[:4] if y else words[4:], size=rng.integers(2, 8))) for y in [0, 1] * 12]
    data = Dataset.from_dict({"text": texts, "label": [0, 1] * 12})
    data = data.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    return BertForSequenceClassification(config), data, tokenizer


@pytest.mark.parametrize("family", ["vit", "resnet", "bert"])
def test_trains_any_classifier(tmp_path, family):
    processing_class = None
    if family == "vit":
        model, data = make_vit(), make_image_dataset()
    elif family == "resnet":
        model, data = resnet(), make_image_dataset(image_size=16)
    else:
        model, data, processing_class = bert_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = training_args(tmp_path, num_train_epochs=2, learning_rate=5e-2)
    trainer = CSKDTrainer(model=model, args=args, train_dataset=data, processing_class=processing_class)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "cskd_loss" in log]
    assert logs and all(np.isfinite(log["loss"]) and log["cskd_loss"] >= 0 for log in logs)
    assert any(log["cskd_loss"] > 0 for log in logs)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def build(tmp_path, data, model=None, **overrides):
    return CSKDTrainer(model=model or make_vit(), args=training_args(tmp_path, **overrides), train_dataset=data)


def test_error_no_label_column(tmp_path):
    data = make_image_dataset().rename_column("label", "target")
    with pytest.raises(ValueError, match="No label column found.*cskd_label_column"):
        build(tmp_path, data)
    with pytest.raises(ValueError, match="'klass' not found.*'target'"):
        build(tmp_path, data, cskd_label_column="klass")
    assert build(tmp_path, data, cskd_label_column="target").train_dataset.label_column == "target"


def test_error_labels_out_of_range(tmp_path):
    data = Dataset.from_dict({"pixel_values": np.zeros((6, 1, 8, 8), np.float32), "label": [0, 1, 2, 3, 3, -1]})
    with pytest.raises(ValueError, match=r"3 label\(s\).*outside \[0, 3\).*example 3 has label 3"):
        build(tmp_path, data)


def test_error_float_multilabel_and_string_targets(tmp_path):
    pixels = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="floats"):
        build(tmp_path, Dataset.from_dict({"pixel_values": pixels, "label": [0.0, 1.0, 0.5, 1.0]}))
    with pytest.raises(ValueError, match="multi-label"):
        build(tmp_path, Dataset.from_dict({"pixel_values": pixels, "label": [[0, 1], [1], [0], [1]]}))
    with pytest.raises(ValueError, match="class_encode_column"):
        build(tmp_path, Dataset.from_dict({"pixel_values": pixels, "label": ["a", "b", "a", "b"]}))
    with pytest.raises(ValueError, match="multi-label"):
        ClassPairedDataset(Dataset.from_dict({"x": [1, 2]}), labels=np.eye(2, dtype=np.int64))


def test_error_regression_or_multilabel_head(tmp_path):
    with pytest.raises(ValueError, match="regression head"):
        build(tmp_path, make_image_dataset(), model=make_vit(num_labels=1))
    model = make_vit()
    model.config.problem_type = "multi_label_classification"
    with pytest.raises(ValueError, match="multi-label"):
        build(tmp_path, make_image_dataset(), model=model)


def test_error_no_class_with_two_members_or_empty(tmp_path):
    pixels = np.zeros((3, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="No class has two examples"):
        build(tmp_path, Dataset.from_dict({"pixel_values": pixels, "label": [0, 1, 2]}))
    with pytest.raises(ValueError, match="empty"):
        build(tmp_path, make_image_dataset().select([]))


def test_class_paired_dataset_refuses_a_stream():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield {"label": 0}

    with pytest.raises(TypeError, match="map-style.*pass the stream to CSKDTrainer"):
        ClassPairedDataset(Stream())


@pytest.mark.parametrize(
    "field, value, message",
    [("cskd_temperature", 0.0, "cskd_temperature must be > 0"), ("cskd_lambda", -0.1, "cskd_lambda must be >= 0")],
)
def test_error_bad_hyperparameters(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        CSKDConfig(output_dir=str(tmp_path), **{field: value})
    with pytest.raises(ValueError, match=message):
        CSKDConfig(output_dir=str(tmp_path), **{field: float("nan")})


@pytest.mark.parametrize("mode", ["pairs", "queue"])
def test_group_by_length_reads_the_wrapped_length_column(tmp_path, mode):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    model, data, tokenizer = bert_and_data()
    data = data.map(lambda row: {"length": len(row["input_ids"])})
    args = training_args(tmp_path, cskd_mode=mode, train_sampling_strategy="group_by_length")
    trainer = CSKDTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and list(sampler.lengths) == data["length"]
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 4

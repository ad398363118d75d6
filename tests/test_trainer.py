import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_image_dataset, make_vit, training_args
from transformers import Trainer

from hf_cskd import ClassPairedDataset, CSKDTrainer
from hf_cskd.targets.collator import split_pair_inputs


def one_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def official_kd(logits, targets, temperature):
    log_p = torch.log_softmax(logits / temperature, dim=1)
    q = torch.softmax(targets / temperature, dim=1)
    return torch.nn.KLDivLoss(reduction="sum")(log_p, q) * temperature**2 / logits.shape[0]


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_items_in_batch", [None, 16])
def test_training_step_gradients_match_hand_computation(tmp_path, num_items_in_batch):
    lam, temperature = 2.0, 3.0
    model = make_vit(seed=1)
    reference = make_vit(seed=1)
    args = training_args(tmp_path, cskd_lambda=lam, cskd_temperature=temperature, per_device_train_batch_size=8)
    trainer = CSKDTrainer(model=model, args=args, train_dataset=make_image_dataset())
    batch = one_batch(trainer)
    assert "pair_pixel_values" in batch

    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1  # set by train(); training_step reads it
    trainer.training_step(model, dict(batch), num_items_in_batch=num_items_in_batch)

    inputs = dict(batch)
    pair = split_pair_inputs(inputs)
    reference.train()
    logits = reference(pixel_values=inputs["pixel_values"]).logits
    with torch.no_grad():
        pair_logits = reference(pixel_values=pair["pixel_values"]).logits
    # With num_items_in_batch the model sums its loss over the micro-batch and divides by the count
    # of the whole accumulated batch; the KD term must be normalized the same way.
    scale = 1.0 if num_items_in_batch is None else 8 / num_items_in_batch
    loss = scale * (F.cross_entropy(logits, inputs["labels"]) + lam * official_kd(logits, pair_logits, temperature))
    loss.backward()

    ours, ref = grads(model), grads(reference)
    assert ours.keys() == ref.keys() and len(ours) > 0
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)

    # The test can fail: letting gradient flow through the pair forward changes the gradients.
    reference.zero_grad()
    logits = reference(pixel_values=inputs["pixel_values"]).logits
    pair_logits = reference(pixel_values=pair["pixel_values"]).logits
    log_p = torch.log_softmax(logits / temperature, 1)
    wrong = F.cross_entropy(logits, inputs["labels"]) + lam * temperature**2 * F.kl_div(
        log_p, torch.softmax(pair_logits / temperature, 1), reduction="batchmean"
    )
    (scale * wrong).backward()
    assert any(not torch.allclose(ours[n], p.grad, atol=1e-6) for n, p in reference.named_parameters())


def test_pair_forward_runs_in_train_mode_without_graph(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3
    )
    model = ResNetForImageClassification(config)
    trainer = CSKDTrainer(model=model, args=training_args(tmp_path), train_dataset=make_image_dataset(image_size=16))
    batch = one_batch(trainer)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.num_batches_tracked.item()
    seen = []
    hook = model.classifier.register_forward_hook(lambda m, i, o: seen.append((m.training, o.requires_grad)))
    trainer.current_gradient_accumulation_steps = 1
    trainer.training_step(model, dict(batch))
    hook.remove()
    # Anchor forward with graph, then pair forward in train mode, without graph; BatchNorm
    # running statistics are updated by both (the official semantics).
    assert seen == [(True, True), (True, False)]
    assert bn.num_batches_tracked.item() == before + 2


def train_weights(trainer_cls, tmp_path, train_dataset, **overrides):
    args = training_args(tmp_path, num_train_epochs=2, **overrides)
    trainer = trainer_cls(model=make_vit(seed=2), args=args, train_dataset=train_dataset)
    trainer.train()
    return trainer, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("accumulation", [1, 3])
def test_lambda_zero_matches_plain_trainer(tmp_path, accumulation):
    data = make_image_dataset(per_class=10)
    plain_args = dict(gradient_accumulation_steps=accumulation, per_device_train_batch_size=4)
    _, expected = train_weights(Trainer, tmp_path / "plain", data, **plain_args)
    _, unpaired = train_weights(CSKDTrainer, tmp_path / "cskd", data, cskd_lambda=0.0, **plain_args)
    # Pairs given explicitly: the pair forward runs (and is logged) but weighs nothing.
    trainer, paired = train_weights(
        CSKDTrainer, tmp_path / "paired", ClassPairedDataset(data), cskd_lambda=0.0, **plain_args
    )
    assert any("cskd_loss" in log for log in trainer.state.log_history)
    for name, value in expected.items():
        torch.testing.assert_close(unpaired[name], value, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(paired[name], value, rtol=1e-5, atol=1e-5, msg=name)
    assert any(not torch.allclose(expected[n], make_vit(seed=2).state_dict()[n]) for n in expected)


def test_logs_split_the_loss_into_its_terms(tmp_path):
    trainer, _ = train_weights(
        CSKDTrainer, tmp_path, make_image_dataset(per_class=10), cskd_lambda=2.0, gradient_accumulation_steps=2
    )
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs
    for log in logs:
        assert log["cskd_loss"] > 0
        assert log["loss"] == pytest.approx(log["ce_loss"] + 2.0 * log["cskd_loss"], rel=1e-4)


def test_evaluate_matches_plain_trainer(tmp_path):
    def accuracy(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    model = make_vit(seed=3)
    train, evaluation = make_image_dataset(seed=0), make_image_dataset(seed=1)
    args = training_args(tmp_path, per_device_eval_batch_size=5)
    ours = CSKDTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, compute_metrics=accuracy)
    plain = Trainer(model=model, args=args, eval_dataset=evaluation, compute_metrics=accuracy)
    a, b = ours.evaluate(), plain.evaluate()
    assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-6)
    assert a["eval_accuracy"] == b["eval_accuracy"]
    np.testing.assert_allclose(ours.predict(evaluation).predictions, plain.predict(evaluation).predictions, rtol=1e-6)


def test_resume_from_checkpoint_ends_with_the_same_weights(tmp_path):
    data = make_image_dataset(per_class=10)
    common = dict(num_train_epochs=3, save_strategy="steps", save_steps=10, cskd_lambda=1.0)
    args = training_args(tmp_path / "full", **common)
    full = CSKDTrainer(model=make_vit(seed=4), args=args, train_dataset=data)
    full.train()
    # 8 steps per epoch: checkpoint-10 lies inside the second epoch, whose pairs differ from the first's.
    checkpoint = tmp_path / "full" / "out" / "checkpoint-10"
    assert checkpoint.is_dir()
    args = training_args(tmp_path / "resumed", **common)
    resumed = CSKDTrainer(model=make_vit(seed=5), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = full.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)

"""`CSKDTrainer` as a drop-in for `Trainer`: its arguments, its checkpoints both ways, fresh state per run,
dtypes, and the pure GA-normalization rules."""

import copy
import dataclasses
import pickle

import pytest
import torch
from conftest import make_image_dataset, make_vit, training_args
from safetensors.torch import load_file
from test_models_and_errors import bert_and_data
from transformers import HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer_callback import TrainerState

from hf_cskd import CSKDConfig, CSKDTrainer
from hf_cskd.checkpoints import TARGETS_NAME, reload_renamed_weights
from hf_cskd.grad_accumulation import add_loss_terms, kd_denominator, loss_is_scaled_for_ga, normalizes_by_count
from hf_cskd.stream_pairing import StreamPairedDataset


@dataclasses.dataclass
class MyArguments(TrainingArguments):
    my_field: str = dataclasses.field(default="mine", metadata={"help": "a user's own field"})


def test_any_training_arguments_pass_through_intact(tmp_path):
    args = MyArguments(output_dir=str(tmp_path), my_field="kept", learning_rate=0.123, use_cpu=True, report_to="none")
    trainer = CSKDTrainer(model=make_vit(), args=args, train_dataset=make_image_dataset())
    assert trainer.args is args and trainer.args.my_field == "kept"  # the same object: nothing dropped or reset
    assert (
        trainer.cskd.cskd_temperature == 4.0 and trainer.cskd.cskd_lambda == 1.0 and trainer.cskd.cskd_mode == "pairs"
    )
    (config,) = HfArgumentParser(CSKDConfig).parse_args_into_dataclasses(
        ["--output_dir", "x", "--cskd_temperature", "2", "--cskd_lambda", "0.5", "--cskd_stream_buffer_size", "3"]
    )
    assert (config.cskd_temperature, config.cskd_lambda, config.cskd_stream_buffer_size) == (2.0, 0.5, 3)
    assert "class-wise distillation" in HfArgumentParser(CSKDConfig).format_help()


def test_pickled_config_holds_no_token_and_copies_keep_it(tmp_path):
    config = training_args(tmp_path, hub_token="hf_secret_value")
    assert b"hf_secret_value" not in pickle.dumps(config)
    assert pickle.loads(pickle.dumps(config)).hub_token is None
    assert copy.deepcopy(config).hub_token == "hf_secret_value" and config.hub_token == "hf_secret_value"


def test_stream_buffer_is_its_own_knob_and_the_old_meaning_warns(tmp_path):
    import datasets

    stream = datasets.Dataset.from_dict({"x": [0.0] * 6, "label": [0, 1, 2] * 2}).to_iterable_dataset()
    stream = stream.cast_column("label", datasets.ClassLabel(num_classes=3))
    args = training_args(tmp_path, cskd_stream_buffer_size=3, max_steps=1)
    trainer = CSKDTrainer(model=make_vit(), args=args, train_dataset=stream)
    assert isinstance(trainer.train_dataset, StreamPairedDataset) and trainer.train_dataset.buffer_size == 3
    with pytest.warns(FutureWarning, match="no effect in pairs mode.*cskd_stream_buffer_size"):
        training_args(tmp_path, cskd_queue_size=4)
    with pytest.raises(ValueError, match="cskd_stream_buffer_size must be an integer >= 1"):
        training_args(tmp_path, cskd_stream_buffer_size=0)


def make_resnet(seed: int):
    """A model whose checkpoints keep its parameter names (plain Trainer resumes ViT with stale weights)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=3)  # fmt: skip
    return ResNetForImageClassification(config)


def run(trainer_cls, out, data, resume=None, model=make_vit, **overrides):
    values = dict(num_train_epochs=3, save_strategy="steps", save_steps=10, cskd_lambda=0.0, lr_scheduler_type="linear")
    values.update(overrides)
    args = training_args(out, **values)
    if trainer_cls is Trainer:
        args = TrainingArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments)
                                    if f.init})  # fmt: skip
    trainer = trainer_cls(model=model(seed=4 if resume is None else 9), args=args, train_dataset=data)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("writer, reader", [(CSKDTrainer, Trainer), (Trainer, CSKDTrainer)])
def test_each_trainer_resumes_the_others_checkpoint_exactly(tmp_path, writer, reader):
    data = make_image_dataset(per_class=10, image_size=16)  # 8 steps per epoch: checkpoint-10 is in the 2nd epoch
    _, expected = run(writer, tmp_path / "full", data, model=make_resnet)
    checkpoint = tmp_path / "full" / "out" / "checkpoint-10"
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    _, resumed = run(reader, tmp_path / "resumed", data, resume=str(checkpoint), model=make_resnet)
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # The test can fail: without the optimizer's and scheduler's states (a restart) the weights differ.
    (checkpoint / "optimizer.pt").unlink()
    (checkpoint / "scheduler.pt").unlink()
    _, restarted = run(reader, tmp_path / "restarted", data, resume=str(checkpoint), model=make_resnet)
    assert any(not torch.allclose(restarted[n], expected[n], atol=1e-4) for n in expected)


def test_queue_checkpoints_add_only_the_queue_written_before_the_trainer_state(tmp_path, monkeypatch):
    seen = []
    original = TrainerState.save_to_json

    def spy(state, path):  # trainer_state.json marks a checkpoint complete: the queue must already be there
        seen.append((path, (tmp_path / path).parent.joinpath(TARGETS_NAME).is_file()))
        return original(state, path)

    monkeypatch.setattr(TrainerState, "save_to_json", spy)
    trainer, _ = run(CSKDTrainer, tmp_path, make_image_dataset(per_class=10), cskd_lambda=1.0, cskd_mode="queue",
                     num_train_epochs=2)  # fmt: skip
    checkpoint = tmp_path / "out" / "checkpoint-10"
    assert seen and all(present for _, present in seen)
    queue = load_file(checkpoint / TARGETS_NAME)
    assert int(queue["calls"]) == 10 and bool(queue["filled"].any())
    names = {p.name for p in checkpoint.iterdir()}
    assert names - {TARGETS_NAME, "training_args.json"} == {p.name for p in plain_checkpoint_files(tmp_path)}


def plain_checkpoint_files(tmp_path):
    _, _ = run(Trainer, tmp_path / "plain", make_image_dataset(per_class=10), num_train_epochs=2)
    return list((tmp_path / "plain" / "out" / "checkpoint-10").iterdir())


def queue_hits(trainer):
    return [log["cskd_queue_hit"] for log in trainer.state.log_history if "cskd_queue_hit" in log]


def test_each_training_run_starts_with_an_empty_queue(tmp_path):
    args = training_args(tmp_path, cskd_mode="queue", max_steps=4)
    trainer = CSKDTrainer(model_init=lambda: make_vit(seed=0), args=args, train_dataset=make_image_dataset())
    trainer.train()
    first = queue_hits(trainer)
    assert first[0] == 0.0 and first[-1] > 0  # a new queue finds nothing at the first step, then fills
    trainer.train()  # a second run, as in each trial of `hyperparameter_search` (model_init, then train)
    assert queue_hits(trainer)[:1] == [0.0] and queue_hits(trainer) == first
    assert len(trainer._cskd_sums.sums) == 0  # nothing left over for the next run's first log


def test_float64_bert_with_gradient_accumulation(tmp_path):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, data, tokenizer = bert_and_data()
        assert next(model.parameters()).dtype == torch.float64
        args = training_args(tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=3, max_steps=3)
        trainer = CSKDTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        trainer.train()
    finally:
        torch.set_default_dtype(previous)
    logs = [log for log in trainer.state.log_history if "cskd_loss" in log]
    assert len(logs) == 3 and all(log["cskd_loss"] > 0 for log in logs)
    assert trainer._normalizes_by_count is False  # BERT's loss ignores num_items_in_batch, found in float64


@pytest.mark.parametrize("fail", [False, True])
def test_calibrate_a_bf16_model(tmp_path, fail):
    split = make_image_dataset(per_class=16).train_test_split(test_size=0.5, seed=0, stratify_by_column="label")
    model = make_vit()
    trainer = CSKDTrainer(model=model, args=training_args(tmp_path, max_steps=12), train_dataset=split["train"])
    trainer.train()
    model.to(torch.bfloat16).train()
    if fail:  # a head whose output passes through a non-linearity cannot absorb a temperature
        model.classifier = torch.nn.Sequential(model.classifier, torch.nn.Tanh())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if fail:
        with pytest.raises(ValueError, match="did not scale its logits"):
            trainer.calibrate(split["test"])
        temperature = 1.0
    else:
        temperature = trainer.calibrate(split["test"])
        assert temperature != 1.0
    assert model.training  # back in the mode it was in
    after = model.state_dict()
    for name, value in before.items():
        assert after[name].dtype == torch.bfloat16, name
        if name.startswith("classifier"):  # divided in float32, rounded once to bf16
            expected = (value.float() / temperature).to(torch.bfloat16)
            assert torch.equal(after[name], expected), name
        else:
            assert torch.equal(after[name], value), name


def test_renamed_weights_are_reloaded_from_sharded_checkpoints(tmp_path):
    trained, stale = make_vit(seed=1), make_vit(seed=2)
    trained.save_pretrained(tmp_path, max_shard_size="8KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    from transformers.trainer import load_sharded_checkpoint  # where Trainer takes it from, in every version

    load_sharded_checkpoint(stale, str(tmp_path), strict=False)  # what Trainer does: legacy names are skipped
    assert any(not torch.equal(stale.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert reload_renamed_weights(stale, str(tmp_path))
    for name, value in trained.state_dict().items():
        assert torch.equal(stale.state_dict()[name], value), name


def test_ga_rules_as_pure_functions():
    assert loss_is_scaled_for_ga(None, True, 16, False) and not loss_is_scaled_for_ga(None, True, None, False)
    assert loss_is_scaled_for_ga(None, False, None, True) and loss_is_scaled_for_ga(True, False, None, False)
    assert not loss_is_scaled_for_ga(False, True, 16, True)  # Trainer.loss_is_scaled_for_ga decides (>= 5.19)
    assert kd_denominator(4, 16, scaled_for_ga=False, by_count=True, accumulation_steps=4) == 4
    assert kd_denominator(4, None, scaled_for_ga=True, by_count=True, accumulation_steps=4) == 16
    assert kd_denominator(4, 16, scaled_for_ga=True, by_count=True, accumulation_steps=4, loss_scale=2) == 8
    assert kd_denominator(4, 16, scaled_for_ga=True, by_count=False, accumulation_steps=4, loss_scale=2) == 2
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    total = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert normalizes_by_count(total / 16, logits, labels, 16) is True
    assert normalizes_by_count(total / 4, logits, labels, torch.tensor(16)) is False
    assert normalizes_by_count(total / 4, logits, labels, 4) is None  # same count: cannot tell
    assert normalizes_by_count((total / 16).double(), logits.double(), labels, torch.tensor(16.0)) is True
    # Not scaled, 4 accumulation steps: 0.5 + 2 · 6/4 = 3.5 for the step; logged per optimizer step (/4).
    loss, logged = add_loss_terms(torch.tensor(0.5), {"cskd_loss": (2.0, torch.tensor(6.0))}, 4, False, 4)
    assert loss.item() == 3.5 and logged["ce_loss"].item() == 0.125 and logged["cskd_loss"].item() == 0.375
    loss, logged = add_loss_terms(torch.tensor(0.5), {"a": (1.0, torch.tensor(8.0)), "b": (0.5, torch.tensor(4.0))},
                                  16, True, 4)  # fmt: skip
    assert loss.item() == 0.5 + 0.5 + 0.125  # scaled: the terms are already per optimizer step
    assert {name: value.item() for name, value in logged.items()} == {"ce_loss": 0.5, "a": 0.5, "b": 0.25}

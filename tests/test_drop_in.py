"""`CSKDTrainer` as a drop-in for `Trainer`: its arguments, its checkpoints both ways, fresh state per run,
dtypes, and the loss contract as pure functions."""

import copy
import dataclasses
import pickle
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import make_image_dataset, make_vit, training_args
from safetensors.torch import load_file
from test_models_and_errors import bert_and_data
from transformers import HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer_callback import TrainerState
from transformers.trainer_pt_utils import LabelSmoother

from hf_cskd import CSKDConfig, CSKDTrainer
from hf_cskd.losses.cskd import class_wise_kd_loss
from hf_cskd.losses.training_loss import CSKDLoss, StepTerms, cross_entropy_sum
from hf_cskd.targets.stream_pairing import StreamPairedDataset
from hf_cskd.trainer.checkpoints import TARGETS_NAME, reload_renamed_weights


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
    assert trainer.cskd_loss.logs.micro_steps == 0  # nothing left over for the next run's first log


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
            trainer.calibrate(split["test"], bootstrap_resamples=0)
        temperature = 1.0
    else:
        temperature = trainer.calibrate(split["test"], bootstrap_resamples=0)
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


def test_the_loss_contract_as_pure_functions():
    """`CSKDLoss` is Trainer's custom-loss contract: sums over the micro-batch divided by `num_items_in_batch`."""
    generator = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, -100, 1])  # -100: a row without a label, as Trainer counts them
    smoothed = LabelSmoother(epsilon=0.1)({"logits": logits}, labels)  # transformers' own label smoothing
    torch.testing.assert_close(cross_entropy_sum(logits, labels, None, 0.1) / 5, smoothed)
    ce_sum = F.cross_entropy(logits, labels, reduction="sum", ignore_index=-100)
    torch.testing.assert_close(CSKDLoss()({"logits": logits}, labels, num_items_in_batch=torch.tensor(20)), ce_sum / 20)
    torch.testing.assert_close(CSKDLoss()({"logits": logits}, labels), ce_sum / 5)  # evaluation: a batch mean
    loss_func = CSKDLoss()
    loss_func.step = StepTerms(SimpleNamespace(cskd_temperature=2.0, cskd_lambda=3.0),
                               targets=lambda *_: (target, {}), accumulation_steps=4)  # fmt: skip
    kd_sum = class_wise_kd_loss(logits, target, 2.0) * 6
    # No count from Trainer: this micro-batch's 5 labelled rows x 4 accumulation steps.
    torch.testing.assert_close(loss_func((logits,), labels), (ce_sum + 3.0 * kd_sum) / 20)
    assert loss_func.step is None  # one use per forward: the next call (evaluation) is the plain loss
    logs = loss_func.logs.pop(lambda value, how: value)
    assert logs == pytest.approx({"ce_loss": (ce_sum / 5).item(), "cskd_loss": (kd_sum / 5).item()})
    # A user's own loss takes the cross-entropy's place; the terms are added to it.
    loss_func = CSKDLoss(base=lambda outputs, labels, num_items_in_batch=None: outputs[0].sum() * 0 + 7.0)
    loss_func.step = StepTerms(SimpleNamespace(cskd_temperature=2.0, cskd_lambda=3.0), targets=lambda *_: (target, {}))
    torch.testing.assert_close(loss_func((logits,), labels, torch.tensor(10)), 7.0 + 3.0 * kd_sum / 10)

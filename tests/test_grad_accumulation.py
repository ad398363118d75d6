"""λ means the same at any gradient accumulation, whether or not the model's own loss honours `num_items_in_batch`."""

import pytest
import torch
from conftest import make_image_dataset, make_vit, training_args
from test_models_and_errors import bert_and_data
from transformers import Trainer, TrainingArguments

from hf_cskd import CSKDTrainer


def bert_without_dropout():
    model, data, tokenizer = bert_and_data()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model, data, tokenizer


def build(family):
    if family == "vit":
        return make_vit(seed=3), make_image_dataset(), None
    torch.manual_seed(0)
    return bert_without_dropout()


def frozen_queue(trainer):
    """One fixed entry per class, never replaced: every anchor gets the same target at any GA."""
    queue = trainer.cskd_targets.queue
    generator = torch.Generator().manual_seed(0)
    queue.push(3 * torch.randn(queue.num_labels, queue.num_labels, generator=generator),
               torch.arange(queue.num_labels), torch.arange(queue.num_labels) + 1000)  # fmt: skip
    queue.push = queue.reset = lambda *args: None  # kept as it is, also by the reset at the start of train()


def sgd_update(tmp_path, family, accumulation, lam, mode="pairs", trainer_cls=CSKDTrainer):
    """The parameter change of one SGD step over the same 8 examples (batch 8 / accumulation)."""
    model, data, tokenizer = build(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = dict(per_device_train_batch_size=8 // accumulation, gradient_accumulation_steps=accumulation,
                    max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0,
                    weight_decay=0.0)  # fmt: skip
    if trainer_cls is Trainer:
        args = TrainingArguments(output_dir=str(tmp_path / "plain"), use_cpu=True, report_to="none", seed=0,
                                 disable_tqdm=True, **settings)  # fmt: skip
    else:
        args = training_args(tmp_path / f"{family}{accumulation}{lam}{mode}", cskd_lambda=lam, cskd_mode=mode,
                             cskd_queue_size=1, **settings)  # fmt: skip
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    if mode == "queue" and lam > 0:
        frozen_queue(trainer)
    trainer.train()
    return torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])


@pytest.mark.parametrize("family", ["vit", "bert"])
@pytest.mark.parametrize("mode", ["pairs", "queue"])
def test_the_update_is_the_same_at_any_accumulation(tmp_path, family, mode):
    ce = {ga: sgd_update(tmp_path, family, ga, 0.0) for ga in (1, 4)}
    # λ = 0 keeps plain-Trainer parity, whatever Trainer does with the model's loss at GA = 4: ViT's loss honours
    # num_items_in_batch (the same update as at GA 1), BERT's returns micro-batch means that Trainer sums (4x).
    plain = sgd_update(tmp_path, family, 4, 0.0, trainer_cls=Trainer)
    torch.testing.assert_close(ce[4], plain, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ce[4], (1.0 if family == "vit" else 4.0) * ce[1], rtol=1e-4, atol=1e-6)
    # With λ > 0 the loss is hf-cskd's, on Trainer's contract (sums / num_items_in_batch): the same update at GA 1
    # and 4 for either model, CE and KD alike, so λ weighs the KD term against the CE as without accumulation.
    full = {ga: sgd_update(tmp_path, family, ga, 2.0, mode) for ga in (1, 4)}
    assert (full[1] - ce[1]).abs().max() > 1e-4  # the KD term does move the weights (at GA 1 the CEs agree)
    torch.testing.assert_close(full[4], full[1], rtol=1e-3, atol=1e-6)

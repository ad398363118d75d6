"""Queue mode (`cskd_mode="queue"`): the class-wise queue of recent predictions."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_image_dataset, make_vit, run_processes, training_args
from safetensors.torch import load_file
from test_recipe import free_port
from test_trainer import grads, official_kd

from hf_cskd import ClassPairedDataset, CSKDTrainer, class_wise_kd_loss
from hf_cskd.targets.class_queue import NO_ID, ClassQueue, queue_bytes
from hf_cskd.targets.collator import EXAMPLE_ID_KEY
from hf_cskd.trainer.checkpoints import TARGETS_NAME

ROOT = Path(__file__).resolve().parents[1]


def rows(*values):
    return torch.tensor(values, dtype=torch.int64)


def test_scripted_batches_match_a_hand_computed_queue():
    queue = ClassQueue(num_labels=3, size=2, seed=0)
    a = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    # Step 1: the queue is empty, so every anchor gets its own logits (a KD term of exactly 0).
    targets, found = queue.draw_and_push(a, rows(0, 0, 1), rows(10, 11, 12))
    assert not found.any() and torch.equal(targets, a)
    assert class_wise_kd_loss(a, targets, 4.0).item() == 0.0
    assert torch.equal(queue.logits[0], a[:2]) and torch.equal(queue.logits[1, 0], a[2])
    assert queue.ids.tolist() == [[10, 11], [12, NO_ID], [NO_ID, NO_ID]] and queue.head.tolist() == [0, 1, 0]

    # Step 2: example 10 may only meet example 11's entry; example 12 is alone in class 1 (its own
    # entry is excluded); class 2 is empty.
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [5.0, 5.0, 5.0]])
    targets, found = queue.draw_and_push(b, rows(0, 1, 2), rows(10, 12, 13))
    assert found.tolist() == [True, False, False]
    assert torch.equal(targets, torch.stack([a[1], b[1], b[2]]))
    expected_loss = official_kd(b[:1], a[1:2], 4.0).item() / 3  # the two misses add 0 but count in the batch
    assert class_wise_kd_loss(b, targets, 4.0).item() == pytest.approx(expected_loss, rel=1e-5)
    # The ring buffer of class 0 wrapped: slot 0 now holds the new prediction of example 10.
    assert queue.ids.tolist() == [[10, 11], [12, 12], [13, NO_ID]] and queue.head.tolist() == [1, 0, 1]
    assert torch.equal(queue.logits[0, 0], b[0]) and torch.equal(queue.logits[1, 1], b[1])

    # Step 3: three predictions of class 2 in one push with K = 2: the last two survive.
    c = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    queue.draw_and_push(c, rows(2, 2, 2), rows(20, 21, 22))
    # Class 2's head was at slot 1: 20 -> slot 1, 21 -> slot 0, 22 -> slot 1 (overwriting 20).
    assert queue.ids[2].tolist() == [21, 22] and queue.head[2].item() == 0
    assert torch.equal(queue.logits[2], c[1:])


def test_draws_are_uniform_over_the_other_examples_of_the_class():
    queue = ClassQueue(num_labels=2, size=4, seed=3)
    queue.push(torch.eye(2).repeat(2, 1) * torch.arange(1, 5)[:, None], rows(0, 0, 0, 0), rows(1, 2, 3, 4))
    counts = {}
    for _ in range(600):
        targets, found = queue.draw(torch.zeros(1, 2), rows(0), rows(2))
        queue.calls += 1  # a new generator state, as draw_and_push would give
        assert found.item()
        counts[targets[0].sum().item()] = counts.get(targets[0].sum().item(), 0) + 1
    assert sorted(counts) == [1.0, 3.0, 4.0]  # never example 2's own entry (value 2)
    assert all(150 < n < 250 for n in counts.values())


def test_unknown_ids_may_meet_any_entry_and_draws_are_reproducible():
    def run(seed):
        queue = ClassQueue(num_labels=2, size=3, seed=seed)
        queue.push(torch.randn(3, 2, generator=torch.Generator().manual_seed(0)), rows(1, 1, 1), rows(5, 6, 7))
        return [queue.draw_and_push(torch.zeros(1, 2), rows(1), rows(NO_ID))[0] for _ in range(5)]

    assert all(torch.equal(x, y) for x, y in zip(run(0), run(0)))
    assert not all(torch.equal(x, y) for x, y in zip(run(0), run(1)))

    queue = ClassQueue(num_labels=2, size=1)
    queue.push(torch.ones(1, 2), rows(0), rows(NO_ID))
    _, found = queue.draw(torch.zeros(1, 2), rows(0), rows(NO_ID))
    assert found.item()  # without ids, an entry of unknown origin is usable


def test_state_dict_round_trip_continues_identically():
    queue = ClassQueue(num_labels=3, size=2, seed=1)
    for step in range(3):
        queue.draw_and_push(torch.randn(4, 3), torch.randint(0, 3, (4,)), torch.arange(4) + 4 * step)
    copy = ClassQueue(num_labels=3, size=2, seed=1)
    copy.load_state_dict(queue.state_dict())
    logits, labels, ids = torch.randn(6, 3), torch.randint(0, 3, (6,)), torch.arange(6)
    a, b = queue.draw_and_push(logits, labels, ids), copy.draw_and_push(logits, labels, ids)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="same cskd_queue_size"):
        ClassQueue(num_labels=3, size=4).load_state_dict(queue.state_dict())


def queue_trainer(tmp_path, model=None, data=None, **overrides):
    args = training_args(tmp_path, cskd_mode="queue", **overrides)
    return CSKDTrainer(model=model or make_vit(seed=1), args=args, train_dataset=data or make_image_dataset())


def test_bad_configurations_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="cskd_mode must be one of \\['pairs', 'queue'\\], got 'queues'"):
        training_args(tmp_path, cskd_mode="queues")
    with pytest.raises(ValueError, match="cskd_queue_size must be an integer >= 1, got 0"):
        training_args(tmp_path, cskd_mode="queue", cskd_queue_size=0)
    with pytest.raises(ValueError, match=r"needs 3\.0 GiB .* bfloat16 .*1\.5 GiB.*lower cskd_queue_size \(at most 5 fits\).*'pairs'"):
        queue_trainer(tmp_path, model=make_vit(num_labels=10_000), cskd_queue_size=8)
    with pytest.raises(ValueError, match="not a ClassPairedDataset"):
        queue_trainer(tmp_path, data=ClassPairedDataset(make_image_dataset()))
    labels_out_of_range = make_image_dataset(num_labels=4)
    with pytest.raises(ValueError, match=r"fall outside \[0, 3\)"):
        queue_trainer(tmp_path, data=labels_out_of_range)


def count_forwards(model):
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(torch.is_grad_enabled()))
    return calls


def test_one_forward_per_step_in_queue_mode_two_in_pairs_mode(tmp_path):
    for mode, expected in (("queue", [True]), ("pairs", [True, False])):
        model = make_vit(seed=1)
        trainer = CSKDTrainer(
            model=model, args=training_args(tmp_path, cskd_mode=mode), train_dataset=make_image_dataset()
        )
        batch = next(iter(trainer.get_train_dataloader()))
        assert (EXAMPLE_ID_KEY in batch) == (mode == "queue") and ("pair_pixel_values" in batch) == (mode == "pairs")
        calls = count_forwards(model)
        trainer.current_gradient_accumulation_steps = 1
        trainer.training_step(model, dict(batch))
        assert calls == expected, mode


def test_queue_step_gradient_is_ce_plus_kd_to_constant_targets(tmp_path):
    lam, temperature = 2.0, 3.0
    model, reference = make_vit(seed=1), make_vit(seed=1)
    data = make_image_dataset(per_class=8)
    trainer = queue_trainer(
        tmp_path, model=model, data=data, cskd_lambda=lam, cskd_temperature=temperature, per_device_train_batch_size=8
    )
    queue = trainer.cskd_targets.queue
    # Fill the queue with predictions of examples 100.. (not in the batch): every anchor finds a target.
    queue.push(torch.randn(6, 3) * 3, rows(0, 0, 1, 1, 2, 2), torch.arange(100, 106))
    drawn = []
    original = queue.draw
    queue.draw = lambda *a: drawn.append(original(*a)) or drawn[-1]
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.current_gradient_accumulation_steps = 1
    model.zero_grad()
    trainer.training_step(model, dict(batch))
    targets, found = drawn[0]
    assert found.all() and not targets.requires_grad and not queue.logits.requires_grad

    inputs = {k: v for k, v in batch.items() if k != EXAMPLE_ID_KEY}
    logits = reference(pixel_values=inputs["pixel_values"]).logits
    loss = F.cross_entropy(logits, inputs["labels"]) + lam * official_kd(logits, targets, temperature)
    loss.backward()
    ours, ref = grads(model), grads(reference)
    assert ours.keys() == ref.keys() and ours
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)
    # After the step the anchors' predictions are in the queue, with their example ids.
    assert set(batch[EXAMPLE_ID_KEY].tolist()) <= set(queue.ids.flatten().tolist())
    assert queue.calls == 1


def test_trains_logs_hits_and_queue_is_saved_in_checkpoints(tmp_path):
    trainer = queue_trainer(
        tmp_path, data=make_image_dataset(per_class=10), num_train_epochs=2, save_strategy="steps", save_steps=5
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs[0]["cskd_queue_hit"] < 1.0 and logs[-1]["cskd_queue_hit"] == 1.0  # warm-up, then always a target
    assert all(log["loss"] == pytest.approx(log["ce_loss"] + log["cskd_loss"], rel=1e-4) for log in logs)
    assert any(log["cskd_loss"] > 0 for log in logs)
    state = load_file(tmp_path / "out" / "checkpoint-5" / "cskd_targets.safetensors")
    assert state["logits"].shape == (3, 8, 3) and state["calls"].item() == 5


def test_resume_mid_epoch_gives_the_same_weights_and_queue(tmp_path):
    data = make_image_dataset(per_class=10)
    common = dict(num_train_epochs=3, save_strategy="steps", save_steps=10, cskd_queue_size=3)
    full = queue_trainer(tmp_path / "full", model=make_vit(seed=4), data=data, **common)
    full.train()
    checkpoint = tmp_path / "full" / "out" / "checkpoint-10"  # inside the second epoch (8 steps per epoch)
    resumed = queue_trainer(tmp_path / "resumed", model=make_vit(seed=5), data=data, **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, value in full.cskd_targets.state_dict().items():
        torch.testing.assert_close(resumed.cskd_targets.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    expected = full.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_streams_train_without_example_ids(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            data = make_image_dataset(per_class=4)
            yield from (data[int(i)] for i in np.random.default_rng(0).permutation(len(data)))

    trainer = queue_trainer(tmp_path, data=Stream(), max_steps=6, num_train_epochs=1)
    assert trainer.train_dataset.__class__.__name__ == "Stream"  # nothing wrapped, no ids
    trainer.train()
    logs = [log for log in trainer.state.log_history if "cskd_queue_hit" in log]
    assert len(logs) == 6 and logs[-1]["cskd_queue_hit"] == 1.0


def test_two_processes_hold_identical_queues_and_draw_like_one_process(tmp_path):
    env = {**os.environ, "PROBE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(ROOT / "tests" / "scripts" / "queue_probe.py"), str(tmp_path / "out")]  # fmt: skip
    done = run_processes(command, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    steps = json.loads((tmp_path / "rank0.json").read_text())["steps"]
    assert steps == 8
    for name in ("logits", "ids", "filled", "head", "calls"):
        assert torch.equal(ranks[0][f"queue.{name}"], ranks[1][f"queue.{name}"]), name
    # The last batches are uneven (29 examples, 2 x 4 per step): rank 1's last batch has 1 example.
    sizes = [[ranks[r][f"step{s}.labels"].numel() for s in range(steps)] for r in (0, 1)]
    assert sizes[0][-1] == 4 and sizes[1][-1] == 1
    # One process fed the same global batches (rank 0's rows, then rank 1's) draws the same targets
    # and ends with the same queue.
    single = ClassQueue(num_labels=3, size=4, seed=0)
    for s in range(steps):
        cat = [torch.cat([ranks[r][f"step{s}.{k}"] for r in (0, 1)]) for k in ("logits", "labels", "ids")]
        targets, _ = single.draw_and_push(*cat)
        torch.testing.assert_close(torch.cat([ranks[r][f"step{s}.targets"] for r in (0, 1)]), targets, rtol=0, atol=0)
    for name, value in single.state_dict().items():
        assert torch.equal(ranks[0][f"queue.{name}"], value), name
    # Saving at every step from 2 processes: every checkpoint complete, in Trainer's format plus the queue.
    checkpoints = sorted((tmp_path / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == [f"checkpoint-{s}" for s in range(1, steps + 1)]
    for folder in checkpoints:
        assert {"trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth",
                "model.safetensors", TARGETS_NAME} <= {p.name for p in folder.iterdir()}, folder  # fmt: skip
    last = load_file(checkpoints[-1] / TARGETS_NAME)
    assert torch.equal(last["logits"], ranks[0]["queue.logits"])


def trained_like_logits(num_labels: int, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Logits shaped like a trained classifier's: a class-specific pattern over all classes (std 2), a few
    confusable classes (+5) and the true class (+9), plus per-example noise."""
    pattern = torch.randn(num_labels, num_labels, generator=generator) * 2
    near = torch.randint(0, num_labels, (num_labels, 5), generator=generator)
    logits = pattern[rows] + 0.7 * torch.randn(len(rows), num_labels, generator=generator)
    logits[torch.arange(len(rows)), rows] += 9
    return logits.scatter_add_(1, near[rows], torch.full((len(rows), 5), 5.0))


def test_a_bfloat16_queue_draws_alike_and_keeps_the_kd_term_within_1_percent():
    """At 1,000 classes the bfloat16 queue draws the same entries as the float32 one (same seed, same pushes) and
    its targets give the KD term to well within 1 % (bfloat16 rounds each logit by at most 2^-8 of itself)."""
    generator = torch.Generator().manual_seed(0)
    dense, half = ClassQueue(1000, 4, seed=3), ClassQueue(1000, 4, seed=3, dtype="bfloat16")
    for step in range(12):
        labels = torch.randint(0, 1000, (512,), generator=generator)
        logits, ids = trained_like_logits(1000, labels, generator), torch.arange(512) + 512 * step
        (exact, found), (rounded, found_half) = dense.draw_and_push(logits, labels, ids), half.draw_and_push(logits, labels, ids)
        assert torch.equal(found, found_half)
    assert half.logits.dtype == torch.bfloat16 and torch.equal(half.logits, dense.logits.to(torch.bfloat16))
    student = trained_like_logits(1000, labels, generator)
    reference = class_wise_kd_loss(student[found], exact[found], 4.0)
    assert found.float().mean() > 0.9 and reference > 0.1
    assert class_wise_kd_loss(student[found], rounded[found], 4.0) == pytest.approx(float(reference), rel=1e-2)


def test_21843_classes_fit_in_one_gib_in_bfloat16_and_the_refusal_names_it():
    with pytest.raises(ValueError, match=r"14\.2 GiB .* Store it in bfloat16 \(cskd_queue_dtype='bfloat16'"):
        ClassQueue(21_843, 8, device="meta")
    queue = ClassQueue(21_843, 1, dtype="bfloat16")  # ImageNet-21k, as allocated
    held = sum(t.nbytes for t in (queue.logits, queue.ids, queue.filled, queue.head))
    assert held <= 1024**3 and queue_bytes(21_843, 1, "bfloat16") <= held
    assert queue_bytes(21_843, 1, "bfloat16") == queue.logits.nbytes + queue.ids.nbytes


def test_a_bfloat16_queue_trains_checkpoints_and_refuses_a_float32_resume(tmp_path):
    """CS-KD queue mode with a bfloat16 queue: the first step pushes exactly the float32 run's logits rounded, the
    checkpoint holds the bfloat16 queue, and resuming it with another storage is refused with the fix."""
    data = make_image_dataset(per_class=10)
    common = dict(save_strategy="steps", save_steps=1, max_steps=1)
    runs = {dtype: queue_trainer(tmp_path / dtype, model=make_vit(seed=2), data=data, cskd_queue_dtype=dtype, **common)
            for dtype in ("float32", "bfloat16")}  # fmt: skip
    for trainer in runs.values():
        trainer.train()
    queues = {dtype: trainer.cskd_targets.queue.logits for dtype, trainer in runs.items()}
    assert torch.equal(queues["bfloat16"], queues["float32"].to(torch.bfloat16))
    state = load_file(tmp_path / "bfloat16" / "out" / "checkpoint-1" / "cskd_targets.safetensors")
    assert state["logits"].dtype == torch.bfloat16
    resumed = queue_trainer(tmp_path / "r", model=make_vit(seed=2), data=data, cskd_queue_dtype="float32",
                            save_strategy="no", max_steps=2)  # fmt: skip
    with pytest.raises(ValueError, match=r"resume with the same cskd_queue_size, cskd_queue_dtype"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "bfloat16" / "out" / "checkpoint-1"))

"""Distillation from a teacher beside CS-KD (`CSKDTrainer(teacher_model=...)`): the exact term, a frozen teacher
that never reaches a checkpoint, refused label spaces, logs and card, and exact resume."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_image_dataset, make_vit, run_processes, training_args
from safetensors.torch import load_file

from hf_cskd import CSKDTrainer
from hf_cskd.targets.collator import split_pair_inputs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import train_vit  # noqa: E402

FAST = ["--max_steps", "3", "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--max_eval_samples", "32",
        "--save_strategy", "no", "--logging_steps", "1", "--bootstrap_resamples", "0"]  # fmt: skip


def hinton_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean, written out."""
    p = torch.softmax(teacher / temperature, dim=1)
    log_q = torch.log_softmax(student / temperature, dim=1)
    return (p * (torch.log(p) - log_q)).sum() * temperature**2 / student.shape[0]


def labelled(model, names):
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    return model


@pytest.mark.parametrize("mode", [None, "pairs", "queue"])
def test_teacher_term_equals_the_hand_computed_kl(tmp_path, mode):
    alpha, t_teacher, lam, t_cskd = 0.7, 2.0, 1.5, 3.0
    student, reference, teacher = make_vit(seed=1), make_vit(seed=1), make_vit(seed=9)
    cskd = {"cskd_lambda": 0.0} if mode is None else {"cskd_lambda": lam, "cskd_mode": mode, "cskd_temperature": t_cskd}
    args = training_args(tmp_path, per_device_train_batch_size=8, teacher_kd_weight=alpha,
                         teacher_kd_temperature=t_teacher, **cskd)  # fmt: skip
    trainer = CSKDTrainer(model=student, args=args, train_dataset=make_image_dataset(), teacher_model=teacher)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.current_gradient_accumulation_steps = 1
    student.train()
    loss = trainer.compute_loss(student, dict(batch))

    inputs = dict(batch)
    pair = split_pair_inputs(inputs)
    reference.train()
    logits = reference(pixel_values=inputs["pixel_values"]).logits
    with torch.no_grad():
        teacher_logits = teacher.eval()(pixel_values=inputs["pixel_values"]).logits
    expected = F.cross_entropy(logits, inputs["labels"]) + alpha * hinton_kd(logits, teacher_logits, t_teacher)
    if mode == "pairs":
        with torch.no_grad():
            expected = expected + lam * hinton_kd(logits, reference(pixel_values=pair["pixel_values"]).logits, t_cskd)
    # queue mode: the first step's queue is empty, so its CS-KD term is 0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    logged = trainer.cskd_loss.logs  # the term as logged: summed over the batch's labelled rows
    sums = logged.sums
    torch.testing.assert_close(
        sums["teacher_kd_loss"] / logged.count, hinton_kd(logits, teacher_logits, t_teacher).detach()
    )
    assert ("cskd_loss" in sums) == (mode is not None)

    # The test can fail: without the teacher the loss is another number.
    trainer.teacher_model = None
    assert not torch.isclose(trainer.compute_loss(student, dict(batch)), expected)


def test_teacher_is_frozen_logged_stated_and_never_saved(tmp_path):
    teacher = make_vit(seed=9)
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    args = training_args(tmp_path, num_train_epochs=2, save_strategy="steps", save_steps=4, cskd_mode="queue",
                         teacher_kd_weight=0.5, learning_rate=5e-2)  # fmt: skip
    trainer = CSKDTrainer(model=make_vit(seed=1), args=args, train_dataset=make_image_dataset(), teacher_model=teacher)
    trainer.train()
    trainer.save_model()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name  # the teacher never trained
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    logs = [log for log in trainer.state.log_history if "loss" in log and "teacher_kd_loss" in log]
    assert logs and all({"ce_loss", "cskd_loss", "teacher_kd_loss"} <= set(log) for log in logs)
    # Checkpoints and the saved model hold the student's tensors only: a plain save's names and sizes, and an
    # optimizer state for the student's parameters only.
    out = tmp_path / "out"
    make_vit().save_pretrained(tmp_path / "plain")
    plain = {name: t.shape for name, t in load_file(tmp_path / "plain" / "model.safetensors").items()}
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 3
    for folder in [out, *checkpoints]:
        assert {name: t.shape for name, t in load_file(folder / "model.safetensors").items()} == plain, folder
    trained = sum(p.requires_grad for p in trainer.model.parameters())
    for folder in checkpoints:
        assert len(torch.load(folder / "optimizer.pt", weights_only=True)["state"]) == trained
    trainer.create_model_card()
    card = (out / "README.md").read_text()
    assert "A teacher, **" in card and "0.5 × teacher distillation (T_t = 4.0)" in card
    assert json.loads((out / "training_args.json").read_text())["teacher_kd_weight"] == 0.5


@pytest.mark.parametrize(
    ("teacher_labels", "message"),
    [
        (["a", "b", "c", "d"], "predicts 4 classes and the student 3"),
        (["c", "a", "b"], "in another order"),
        (["a", "b", "z"], r"\(2, 'z', 'c'\)"),
    ],
)
def test_a_teacher_of_another_label_space_is_refused_before_training(tmp_path, teacher_labels, message):
    student = labelled(make_vit(), ["a", "b", "c"])
    teacher = labelled(make_vit(num_labels=len(teacher_labels)), teacher_labels)
    with pytest.raises(ValueError, match=message):
        CSKDTrainer(model=student, args=training_args(tmp_path), train_dataset=make_image_dataset(),
                    teacher_model=teacher)  # fmt: skip
    CSKDTrainer(model=student, args=training_args(tmp_path), train_dataset=make_image_dataset(),
                teacher_model=labelled(make_vit(), ["a", "b", "c"]))  # fmt: skip


@pytest.mark.parametrize("mode", ["pairs", "queue"])
def test_resume_with_a_teacher_ends_with_the_same_weights(tmp_path, mode):
    data = make_image_dataset(per_class=10)
    common = dict(num_train_epochs=3, save_strategy="steps", save_steps=10, cskd_mode=mode, teacher_kd_weight=1.0)
    full = CSKDTrainer(model=make_vit(seed=4), args=training_args(tmp_path / "full", **common), train_dataset=data,
                       teacher_model=make_vit(seed=9))  # fmt: skip
    full.train()
    checkpoint = tmp_path / "full" / "out" / "checkpoint-10"
    resumed = CSKDTrainer(model=make_vit(seed=5), args=training_args(tmp_path / "resumed", **common),
                          train_dataset=data, teacher_model=make_vit(seed=9))  # fmt: skip
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = full.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_recipe_distills_from_a_teacher_it_fine_tuned_and_refuses_other_inputs(tmp_path):
    fast = FAST
    train_vit.main(["--output_dir", str(tmp_path / "teacher"), "--cskd_lambda", "0", *fast])
    student = train_vit.main(["--output_dir", str(tmp_path / "student"), "--teacher_model_name_or_path",
                              str(tmp_path / "teacher"), "--teacher_kd_weight", "2", *fast])  # fmt: skip
    assert student.teacher_model is not None and not student.teacher_model.training
    assert all("teacher_kd_loss" in log for log in student.state.log_history if "ce_loss" in log)
    results = json.loads((tmp_path / "student" / "test_results.json").read_text())
    assert results["method"] == "CS-KD (queue) + teacher KD"
    card = (tmp_path / "student" / "README.md").read_text()
    assert "A teacher, **teacher**" in card and str(tmp_path) not in card  # a local path shows as its folder name
    saved = load_file(tmp_path / "student" / "model.safetensors")
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in student.model.parameters())

    with pytest.raises(ValueError, match="would see pixels it was not trained on"):
        train_vit.main(["--output_dir", str(tmp_path / "other"), "--teacher_model_name_or_path",
                        str(tmp_path / "teacher"), "--image_size", "24", *fast])  # fmt: skip


def test_the_teacher_runs_under_the_students_mixed_precision(tmp_path):
    teacher, seen = make_vit(seed=9), []
    forward = teacher.forward

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return forward(*args, **kwargs)

    teacher.forward = spy
    args = training_args(tmp_path, bf16=True, max_steps=2, cskd_mode="queue")
    trainer = CSKDTrainer(model=make_vit(seed=1), args=args, train_dataset=make_image_dataset(), teacher_model=teacher)
    trainer.train()
    assert seen == [True, True]
    logs = [log for log in trainer.state.log_history if "teacher_kd_loss" in log]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(log["teacher_kd_loss"])) for log in logs)


def test_two_processes_distill_from_a_teacher(tmp_path):
    teacher = tmp_path / "teacher"
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "train_vit.py"), "--output_dir", str(teacher),
                           "--cskd_lambda", "0", *FAST], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(ROOT / "recipes" / "train_vit.py"), *FAST, "--output_dir", str(tmp_path / "student"),
               "--teacher_model_name_or_path", str(teacher), "--ddp_find_unused_parameters", "false"]  # fmt: skip
    done = run_processes(command, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    state = json.loads((tmp_path / "student" / "trainer_state.json").read_text())
    logs = [log for log in state["log_history"] if "ce_loss" in log]
    assert len(logs) == 3 and all("teacher_kd_loss" in log for log in logs)
    assert "A teacher, **teacher**" in (tmp_path / "student" / "README.md").read_text()

"""Every combination of features computes what it says: a pairwise covering matrix of {λ = 0, pairs, queue} x
{Mixup, CutMix, teacher, label smoothing, gradient accumulation 4, bf16 autocast, stream, tuple-returning model,
2 processes}, each case checked against invariants rather than only run (the cases: `combination_cases.CASES`).

Invariants, where they apply: finite losses and the logs each term promises; exact resume from the mid-run
checkpoint (not for a stream with gradient accumulation, which plain `Trainer` does not resume exactly either:
`combination_cases.resumes_exactly`); the queue holds only predictions of unmixed images (and does fill); the teacher is untouched;
`calibration.json` is true to the saved weights; under gradient accumulation each micro-batch weighs in the
optimizer step as a whole batch does without it (so λ and the teacher's weight mean the same).
"""

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from combination_cases import (
    CASES,
    MAX_STEPS,
    SAVE_STEPS,
    QueuePurityProbe,
    build,
    case_id,
    final_weights,
    held_out_data,
    logits_of,
    resumes_exactly,
    uncovered_pairs,
)
from conftest import run_processes
from safetensors.torch import load_file
from test_recipe import free_port
from transformers import TrainerCallback

from hf_cskd.calibration.temperature import CalibrationNotApplied

ROOT = Path(__file__).resolve().parents[1]
SINGLE = [case for case in CASES if "two_processes" not in case[1]]
TWO = [case for case in CASES if "two_processes" in case[1]]


def test_cases_cover_every_pair_of_options():
    assert uncovered_pairs(CASES) == set()
    assert uncovered_pairs(CASES[:-1]) != set()  # the check can fail: the last case holds pairs no other does


def check_logs(log_history: list[dict], case) -> None:
    mode, on = case
    steps = [log for log in log_history if "loss" in log and "train_runtime" not in log]
    assert len(steps) == MAX_STEPS or (MAX_STEPS - SAVE_STEPS) == len(steps)
    for log in steps:
        for key in ("loss", "ce_loss", "cskd_loss", "teacher_kd_loss"):
            assert key not in log or math.isfinite(log[key]), (key, log)
        assert ("cskd_loss" in log) == (mode != "lambda0"), log
        assert ("teacher_kd_loss" in log) == ("teacher" in on), log
    if mode == "queue":
        assert any(log.get("cskd_queue_hit", 0) > 0 for log in steps)


def check_calibration_is_true(trainer, output_dir: Path) -> None:
    """Whatever `calibrate()` ends in, `calibration.json` says what the saved weights do."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    pixels = torch.stack([row["pixel_values"] for row in held_out_data()])
    before = logits_of(model, pixels)
    try:
        trainer.calibrate(held_out_data(), bootstrap_resamples=0)
    except CalibrationNotApplied:
        pass
    trainer.save_model(str(output_dir))
    record = json.loads((output_dir / "calibration.json").read_text())
    after = logits_of(type(model).from_pretrained(output_dir), pixels)
    if "temperature" in record:
        torch.testing.assert_close(after, before / record["temperature"], rtol=1e-4, atol=1e-5)
        assert record["temperature"] != pytest.approx(1.0, abs=1e-3)  # else the check below could not tell
    else:
        assert "fitted_temperature" in record and "warning" in record
        torch.testing.assert_close(after, before, rtol=0, atol=0)


def teacher_state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.teacher_model.state_dict().items()}


@pytest.mark.parametrize("case", SINGLE, ids=case_id)
def test_single_process_case(tmp_path, case):
    mode, on = case
    trainer = build(case, tmp_path / "full")
    mixing = {"mixup", "cutmix"} & set(on)
    probe = QueuePurityProbe(trainer) if mode == "queue" else None
    teacher_before = teacher_state(trainer) if "teacher" in on else None
    try:
        trainer.train()
    finally:
        if probe is not None:
            probe.close()
    check_logs(trainer.state.log_history, case)
    if probe is not None:
        assert probe.impure == [] and probe.clean_entries > 0
        assert (probe.mixed_rows > 0) == bool(mixing)  # mixed rows were met, and kept out of the queue
    if teacher_before is not None:  # frozen, never trained, never in the optimizer
        assert all(torch.equal(teacher_before[k], v) for k, v in teacher_state(trainer).items())
        assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
        optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert not optimized & {id(p) for p in trainer.teacher_model.parameters()}
    if resumes_exactly(case):
        expected = final_weights(trainer)
        resumed = build(case, tmp_path / "full", max_steps=MAX_STEPS)
        resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{SAVE_STEPS}"))
        got = final_weights(resumed)
        assert all(torch.equal(expected[k], got[k]) for k in expected), "resume differs from the uninterrupted run"

    check_calibration_is_true(trainer, tmp_path / "calibrated")
    trainer.create_model_card()  # the card states the queue's unmixed rows exactly when there were some
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert ("only their predictions entered the CS-KD queue" in card) == (mode == "queue" and bool(mixing))


@pytest.mark.parametrize("case", [case for case in SINGLE if "ga4" in case[1]], ids=case_id)
def test_accumulated_micro_batches_weigh_as_whole_batches(tmp_path, case):
    """At learning rate 0 (the same weights throughout), micro-batch k of one step with 4-step accumulation
    contributes a quarter of what batch k contributes to its own step without accumulation: same data, same
    mixing draws, same queue, same pairs. A term normalized per micro-batch instead would be 4x off."""
    losses = {}
    for steps, accumulation in ((1, 4), (4, 1)):
        trainer = build(case, tmp_path / f"ga{accumulation}", learning_rate=0.0, max_steps=steps,
                        gradient_accumulation_steps=accumulation, save_strategy="no")  # fmt: skip
        seen, step = [], trainer.training_step
        trainer.training_step = lambda *a, **k: seen.append(step(*a, **k).item()) or torch.tensor(seen[-1])
        trainer.train()
        losses[accumulation] = seen
        extra = [log for log in trainer.state.log_history if log.get("cskd_loss", 0) > 0 or "teacher_kd_loss" in log]
        assert extra  # an extra term was active, so the check below weighs it
    assert len(losses[4]) == len(losses[1]) == 4
    torch.testing.assert_close(torch.tensor(losses[4]) * 4, torch.tensor(losses[1]), rtol=1e-5, atol=1e-6)


def run_two(case, tmp_path: Path, resume: str | None = None) -> dict:
    probe = tmp_path / ("resumed" if resume else "full")
    probe.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PROBE_DIR": str(probe)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(ROOT / "tests" / "scripts" / "combination_probe.py"), json.dumps(case),
               str(tmp_path / "out"), resume or ""]  # fmt: skip
    done = run_processes(command, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {r: json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)}


@pytest.mark.parametrize("case", TWO, ids=case_id)
def test_two_process_case(tmp_path, case):
    mode, on = case
    ranks = run_two(case, tmp_path)
    for rank in ranks.values():
        assert rank["world_size"] == 2 and rank["wrapped"] == "DistributedDataParallel"
        assert rank["impure"] == [] and rank["teacher_changed"] is False
    check_logs(ranks[0]["log_history"], case)
    if mode == "queue":
        assert ranks[0]["queue"] == ranks[1]["queue"]  # every process holds the same queue
        assert sum(r["clean_entries"] for r in ranks.values()) > 0 and sum(r["mixed_rows"] for r in ranks.values()) > 0
    out = tmp_path / "out"
    if resumes_exactly(case):
        expected = load_file(out / "model.safetensors")
        run_two(case, tmp_path, resume=str(out / f"checkpoint-{SAVE_STEPS}"))
        got = load_file(out / "model.safetensors")
        assert all(torch.equal(expected[k], got[k]) for k in expected), "resume differs from the uninterrupted run"
    raw, record = out / "raw", json.loads((out / "calibrated" / "calibration.json").read_text())
    model_class = type(build(case, tmp_path / "reload", max_steps=1).model)
    pixels = torch.stack([row["pixel_values"] for row in held_out_data()])
    before = logits_of(model_class.from_pretrained(raw), pixels)
    after = logits_of(model_class.from_pretrained(out / "calibrated"), pixels)
    if "temperature" in record:
        torch.testing.assert_close(after, before / record["temperature"], rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_a_search_trial_sets_every_cskd_knob(tmp_path):
    """A real optuna grid over λ ∈ {0, 1} x mode ∈ {pairs, queue}, from a trainer built with λ = 0: each trial trains
    with its own values (the target source, the data wrapping and the collator follow them), as its logs show."""
    optuna = pytest.importorskip("optuna")
    from combination_cases import make_model, training_data
    from conftest import training_args

    from hf_cskd import CSKDTrainer

    grid = {"cskd_lambda": [0.0, 1.0], "cskd_mode": ["pairs", "queue"]}
    trials = []

    def space(trial):
        return {name: trial.suggest_categorical(name, values) for name, values in grid.items()}

    class Record(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            trials.append((args.cskd_lambda, args.cskd_mode, list(state.log_history)))

    args = training_args(tmp_path, cskd_lambda=0.0, max_steps=3, per_device_train_batch_size=4, cskd_queue_size=2)
    trainer = CSKDTrainer(model_init=lambda trial: make_model(("lambda0", ())), args=args,
                          train_dataset=training_data(), eval_dataset=held_out_data(), callbacks=[Record()])  # fmt: skip
    trainer.hyperparameter_search(direction="minimize", backend="optuna", hp_space=space, n_trials=4,
                                  sampler=optuna.samplers.GridSampler(grid))  # fmt: skip
    assert sorted((lam, mode) for lam, mode, _ in trials) == [
        (0.0, "pairs"),
        (0.0, "queue"),
        (1.0, "pairs"),
        (1.0, "queue"),
    ]
    for lam, mode, logs in trials:
        steps = [log for log in logs if "loss" in log and "train_runtime" not in log]
        assert len(steps) == 3
        assert all(("cskd_loss" in log) == (lam > 0) for log in steps), (lam, mode)
        assert all(("cskd_queue_hit" in log) == (lam > 0 and mode == "queue") for log in steps), (lam, mode)
        assert all(("cskd_self_pair" in log) is False for log in steps)


def test_changing_the_arguments_between_train_calls_rebuilds_the_source(tmp_path):
    """The same trainer, trained again after `trainer.args` changed: λ 0 -> 1 (queue) -> 0, and K follows."""
    from combination_cases import make_model, training_data
    from conftest import training_args

    from hf_cskd import CSKDTrainer

    args = training_args(tmp_path, cskd_lambda=0.0, max_steps=2, per_device_train_batch_size=4)
    trainer = CSKDTrainer(model=make_model(("lambda0", ())), args=args, train_dataset=training_data())
    trainer.train()
    assert trainer.cskd_targets is None and "cskd_loss" not in trainer.state.log_history[0]
    trainer.args.cskd_lambda, trainer.args.cskd_mode, trainer.args.cskd_queue_size = 1.0, "queue", 3
    trainer.train()
    assert trainer.cskd_targets.queue.size == 3 and "cskd_queue_hit" in trainer.state.log_history[0]
    assert type(trainer.train_dataset).__name__ == "ExampleIdDataset"
    trainer.args.cskd_lambda = 0.0
    trainer.train()
    assert trainer.cskd_targets is None and "cskd_loss" not in trainer.state.log_history[0]
    assert type(trainer.train_dataset).__name__ == "Dataset"  # the plain training set again

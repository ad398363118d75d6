"""Train a tiny ViT with CS-KD, killed with SIGKILL at a chosen point, or resumed.

Argv: output folder, then `kill-step` (mid-epoch, after checkpoint-4), `kill-save` (while writing
checkpoint-8, before its trainer_state.json), `kill-eval` (during the evaluation at step 6), or
`resume` (resume_from_checkpoint=True), or `full` (uninterrupted); the last two save the final model.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_image_dataset, make_vit, training_args  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_cskd import CSKDTrainer  # noqa: E402

out, mode = Path(sys.argv[1]), sys.argv[2]
SETTINGS = dict(max_steps=12, save_strategy="steps", save_steps=4, eval_strategy="steps", eval_steps=3,
                per_device_train_batch_size=4, cskd_mode="queue", cskd_queue_size=3)  # fmt: skip


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillMidEpoch(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            kill()


def build(callbacks=(), compute_metrics=None) -> CSKDTrainer:
    args = training_args(out.parent, **SETTINGS)
    args.output_dir = str(out)
    data = make_image_dataset(per_class=10)
    return CSKDTrainer(model=make_vit(seed=7), args=args, train_dataset=data, eval_dataset=make_image_dataset(seed=1),
                       callbacks=list(callbacks), compute_metrics=compute_metrics)  # fmt: skip


if mode == "kill-step":
    build([KillMidEpoch()]).train()
elif mode == "kill-save":
    trainer = build()
    original = trainer._save_rng_state

    def save_then_die(output_dir):
        original(output_dir)
        if trainer.state.global_step == 8:
            kill()  # model and optimizer of checkpoint-8 written, its trainer_state.json not yet

    trainer._save_rng_state = save_then_die
    trainer.train()
elif mode == "kill-eval":
    trainer = build(compute_metrics=lambda prediction: kill() if trainer.state.global_step == 6 else {})
    trainer.train()
else:
    trainer = build()
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    trainer.save_model(str(out / "final"))

"""One two-process case of the combination matrix (tests/combination_cases.py) under torchrun (gloo).

argv: the case as JSON, the output folder, and a checkpoint to resume from ("" for a fresh run). Writes
`$PROBE_DIR/rank{RANK}.json`: world size, the wrapped model's class, the logs, the queue (queue mode), what the
purity probe saw and whether the teacher changed. A fresh run also saves the model before (`raw/`) and after
(`calibrated/`) `calibrate()`; the final model is saved in the output folder either way.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from combination_cases import MAX_STEPS, QueuePurityProbe, build, held_out_data  # noqa: E402

from hf_cskd.calibration.temperature import CalibrationNotApplied  # noqa: E402

case_json, output_dir, resume = sys.argv[1], Path(sys.argv[2]), sys.argv[3] or None
case = tuple(json.loads(case_json))
case = (case[0], tuple(case[1]))
probe_dir, rank = Path(os.environ["PROBE_DIR"]), int(os.environ["RANK"])
trainer = build(case, output_dir, max_steps=MAX_STEPS)
batch = trainer.args.per_device_train_batch_size
probe = QueuePurityProbe(trainer, slice(rank * batch, (rank + 1) * batch)) if case[0] == "queue" else None
teacher = trainer.teacher_model
teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()} if teacher is not None else None
trainer.train(resume_from_checkpoint=resume)
result = {
    "world_size": trainer.args.world_size,
    "wrapped": type(trainer.model_wrapped).__name__,
    "log_history": trainer.state.log_history,
    "impure": probe.impure if probe else [],
    "clean_entries": probe.clean_entries if probe else 0,
    "mixed_rows": probe.mixed_rows if probe else 0,
    "teacher_changed": teacher is not None
    and any(not torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items()),
}
if case[0] == "queue":
    state = trainer.cskd_targets.state_dict()
    result["queue"] = {k: hashlib.sha256(v.cpu().numpy().tobytes()).hexdigest() for k, v in state.items()}
trainer.save_model(str(output_dir))
if resume is None:
    trainer.save_model(str(output_dir / "raw"))
    try:
        trainer.calibrate(held_out_data(), bootstrap_resamples=0)
    except CalibrationNotApplied:
        pass
    trainer.save_model(str(output_dir / "calibrated"))
(probe_dir / f"rank{rank}.json").write_text(json.dumps(result))
trainer.accelerator.end_training()

"""Train a tiny ViT in queue mode under torchrun (2 processes, gloo) and record what each rank saw.

Writes `$PROBE_DIR/rank{RANK}.safetensors`: per step the local logits, labels, example ids and drawn
targets, and the final queue; `rank{RANK}.json`: the number of steps. 29 examples and
`even_batches=False` make the last batch of rank 1 shorter than rank 0's.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_image_dataset, make_vit, training_args  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hf_cskd import CSKDTrainer  # noqa: E402

probe, rank = Path(os.environ["PROBE_DIR"]), int(os.environ["RANK"])
data = make_image_dataset(per_class=10).select(range(29))
args = training_args(
    Path(sys.argv[1]),
    cskd_mode="queue",
    cskd_queue_size=4,
    num_train_epochs=2,
    accelerator_config={"even_batches": False},
    save_strategy="steps",  # a checkpoint at every step: both processes write into each folder
    save_steps=1,
)
args.output_dir = sys.argv[1]
trainer = CSKDTrainer(model=make_vit(seed=0), args=args, train_dataset=data)
record, original = {}, trainer.cskd_targets.targets


def recording_targets(model, extras, logits, labels, own_example=None):
    targets, stats = original(model, extras, logits, labels, own_example)
    step = len(record) // 4
    values = {"logits": logits.detach().float(), "labels": labels, "ids": extras["ids"], "targets": targets}
    record.update({f"step{step}.{k}": v.detach().cpu().contiguous() for k, v in values.items()})
    return targets, stats


trainer.cskd_targets.targets = recording_targets
trainer.train()
assert trainer.args.world_size == 2
record.update({f"queue.{k}": v.cpu().contiguous() for k, v in trainer.cskd_targets.state_dict().items()})
save_file(record, probe / f"rank{rank}.safetensors")
(probe / f"rank{rank}.json").write_text(
    json.dumps({"steps": len([k for k in record if k.startswith("step") and k.endswith(".ids")])})
)
trainer.accelerator.end_training()  # destroys the process group, as Accelerate asks scripts to do

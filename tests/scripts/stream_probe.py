"""Train a tiny ViT on a parquet stream under torchrun (2 processes, gloo); record what each rank trained on.

Argv: output folder, mode (`pairs`: every process reads the stream and Accelerate gives each its own
batches, `dispatch_batches=False`; `queue`: process 0 reads it and Accelerate dispatches the batches,
the default). Each example's id is written into its first pixel.
Writes `$PROBE_DIR/rank{RANK}.json`: per step the anchor ids and labels, and the pair ids and labels.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_image_dataset, make_vit, training_args  # noqa: E402
from datasets import load_dataset  # noqa: E402

from hf_cskd import CSKDTrainer  # noqa: E402

out, mode = Path(sys.argv[1]), sys.argv[2]
probe, rank = Path(os.environ["PROBE_DIR"]), int(os.environ["RANK"])
files = [str(probe / f"train-{i}.parquet") for i in range(3)]
if rank == 0 and not Path(files[-1]).exists():
    data = make_image_dataset(per_class=10).with_format(None).select(range(29)).shuffle(seed=0).flatten_indices()
    data = data.map(lambda row, i: {"pixel_values": [[[float(i)] + row["pixel_values"][0][0][1:]] + row["pixel_values"][0][1:]]},
                    with_indices=True)  # fmt: skip
    for i, path in enumerate(files):  # 3 files of 10, 10, 9 examples: uneven shards for 2 ranks
        data.shard(3, i, contiguous=True).to_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)
while not all(Path(f).exists() for f in files):
    pass
stream = load_dataset("parquet", data_files=files, split="train", streaming=True).with_format("torch")
overrides = {"accelerator_config": {"dispatch_batches": False}} if mode == "pairs" else {}
args = training_args(
    out,
    cskd_mode=mode,
    max_steps=10,
    per_device_train_batch_size=4,
    **overrides,
    **({"cskd_queue_size": 4} if mode == "queue" else {"cskd_stream_buffer_size": 4}),
)
args.output_dir = str(out)
trainer = CSKDTrainer(model=make_vit(seed=0), args=args, train_dataset=stream)
records, original = [], trainer.training_step


def recording_step(model, inputs, *rest, **kwargs):
    record = {"anchors": inputs["pixel_values"][:, 0, 0, 0].int().tolist(), "labels": inputs["labels"].tolist()}
    if "pair_pixel_values" in inputs:
        record.update(
            pairs=inputs["pair_pixel_values"][:, 0, 0, 0].int().tolist(), pair_labels=inputs["pair_labels"].tolist()
        )
    records.append(record)
    return original(model, inputs, *rest, **kwargs)


trainer.training_step = recording_step
trainer.train()
assert trainer.args.world_size == 2
(probe / f"rank{rank}.json").write_text(json.dumps(records))
trainer.accelerator.end_training()  # destroys the process group, as Accelerate asks scripts to do

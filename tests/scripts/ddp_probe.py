"""Run recipes/train_vit.py under torchrun, recording which examples each rank loads.

Every example that `ClassPairedDataset` hands to the DataLoader appends (epoch, anchor, pair, anchor label, pair
label) to `$PROBE_DIR/rank{RANK}.jsonl`; the test reads those files after the run.
"""

import json
import os
import sys
from pathlib import Path

from hf_cskd import ClassPairedDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
import train_vit  # noqa: E402

log = open(Path(os.environ["PROBE_DIR"]) / f"rank{os.environ['RANK']}.jsonl", "a")
original = ClassPairedDataset.__getitems__


def recording_getitems(self, indices):
    items = original(self, indices)
    labels = self.index.labels
    for index in indices:
        pair = self.pair_index(index)
        log.write(json.dumps([self.epoch, int(index), pair, int(labels[index]), int(labels[pair])]) + "\n")
    log.flush()
    return items


ClassPairedDataset.__getitems__ = recording_getitems
trainer = train_vit.main(sys.argv[1:])
print(f"rank {os.environ['RANK']}: world_size={trainer.args.world_size} is_main={trainer.is_world_process_zero()}")
trainer.accelerator.end_training()  # destroys the process group, as Accelerate asks scripts to do

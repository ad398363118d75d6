"""Run the main job (recipes/train_vit.py) under torchrun, printing from rank 0 the class that wrapped the model.
FSDP is forced on CPU with the test-only shim of engine_probe.py (a no-op for DDP and DeepSpeed)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
from engine_probe import force_fsdp_on_cpu  # noqa: E402

force_fsdp_on_cpu()
import train_vit  # noqa: E402

trainer = train_vit.main(sys.argv[1:])
if trainer.is_world_process_zero():
    print("RESULT " + json.dumps({"wrapped": type(trainer.model_wrapped).__name__, "fsdp": trainer.is_fsdp_enabled,
                                  "world_size": trainer.args.world_size}), flush=True)  # fmt: skip
trainer.accelerator.end_training()

"""Run the main job (recipes/train_vit.py) under torchrun, printing from rank 0 the class that wrapped the model.
FSDP is forced on CPU with the test-only shim of engine_probe.py (a no-op for DDP and DeepSpeed). With
`--record_raw DIR`, the whole model as trained (gathered, before `calibrate()` touches it) is saved to DIR by the
model's `save_pretrained` (which names the tensors as the checkpoint does): the test compares the saved checkpoint
with the weights of the same run."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
from engine_probe import force_fsdp_on_cpu  # noqa: E402

from hf_cskd import CSKDTrainer  # noqa: E402

force_fsdp_on_cpu()
import train_vit  # noqa: E402

argv = sys.argv[1:]
if "--record_raw" in argv:
    at = argv.index("--record_raw")
    record, argv = Path(argv[at + 1]), argv[:at] + argv[at + 2 :]
    calibrate = CSKDTrainer.calibrate

    def record_then_calibrate(self, *args, **kwargs):
        model = self.model_wrapped if self.is_deepspeed_enabled else self.model  # ZeRO-3 gathers from the engine
        weights = self.accelerator.get_state_dict(model)  # a collective under FSDP2 / ZeRO-3: every rank calls it
        if self.is_world_process_zero():
            self.accelerator.unwrap_model(self.model).save_pretrained(record, state_dict=weights)
        return calibrate(self, *args, **kwargs)

    CSKDTrainer.calibrate = record_then_calibrate

trainer = train_vit.main(argv)
if trainer.is_world_process_zero():
    print("RESULT " + json.dumps({"wrapped": type(trainer.model_wrapped).__name__, "fsdp": trainer.is_fsdp_enabled,
                                  "world_size": trainer.args.world_size}), flush=True)  # fmt: skip
trainer.accelerator.end_training()

"""An image that cannot be decoded mid-run: the error names it, and the last checkpoint resumes without it."""

import pytest
from conftest import make_vit, training_args
from datasets import load_dataset
from test_recipe import write_imagefolder
from transformers import TrainerCallback, ViTImageProcessorPil

from hf_cskd import CSKDTrainer
from hf_cskd.data.errors import ExampleLoadError, NamedRows, source_file, unreadable_rows
from hf_cskd.data.transforms import train_transform
from hf_cskd.trainer.checkpoints import last_complete_checkpoint


class TruncateOnFirstSave(TrainerCallback):
    """Cut a PNG to half its bytes once the first checkpoint is written: epoch 2 then meets it."""

    def __init__(self, path):
        self.path, self.done = path, False

    def on_save(self, args, state, control, **kwargs):
        if not self.done:
            data = self.path.read_bytes()
            self.path.write_bytes(data[: len(data) // 2])
            self.done = True


@pytest.mark.parametrize("mode", ["pairs", "queue"])
def test_truncated_png_is_named_and_the_checkpoint_resumes_without_it(tmp_path, mode):
    root = write_imagefolder(tmp_path / "train", ["ant", "bee", "cow"], per_class=8)
    data = load_dataset("imagefolder", data_dir=str(root), split="train", cache_dir=str(tmp_path / "cache"))
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    transform = train_transform(processor, "image", "label", scale=(0.5, 1.0), horizontal_flip=False)
    victim = source_file(data, 5)
    assert victim.endswith("ant/5.png")
    picked = data.select([17, 5])  # a lazy row mapping: rows are named through it
    assert source_file(picked, 1) == victim and source_file(picked, 0) == source_file(data, 17) != victim
    args = training_args(tmp_path, cskd_mode=mode, num_train_epochs=3, save_strategy="steps", save_steps=2,
                         remove_unused_columns=False)  # fmt: skip
    trainer = CSKDTrainer(model=make_vit(num_labels=3, channels=3), args=args, train_dataset=data.with_transform(transform),
                          callbacks=[TruncateOnFirstSave(tmp_path / victim)])  # fmt: skip
    with pytest.raises(ExampleLoadError, match=rf"row 5 of the train split \(file {victim}\).*unreadable_rows"):
        trainer.train()
    assert trainer.state.global_step < 18 and last_complete_checkpoint(args.output_dir) is not None

    bad = unreadable_rows(data)
    assert bad == [5]
    kept = data.select(sorted(set(range(len(data))) - set(bad))).with_transform(transform)
    resumed = CSKDTrainer(model=make_vit(num_labels=3, channels=3), args=args, train_dataset=kept)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 18  # 3 epochs of 6 steps


def test_an_unreadable_evaluation_example_is_named(tmp_path):
    from hf_cskd.data.transforms import eval_transform

    root = write_imagefolder(tmp_path / "val", ["ant", "bee"], per_class=4)
    data = load_dataset("imagefolder", data_dir=str(root), split="train", cache_dir=str(tmp_path / "cache"))
    victim = tmp_path / source_file(data, 6)
    victim.write_bytes(victim.read_bytes()[:40])
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    # Opt-in for held-out sets (the recipe does it): NamedRows names the row and file that cannot be loaded.
    evaluation = NamedRows(data.with_transform(eval_transform(processor, "image", "label")), split="evaluation")
    args = training_args(tmp_path, remove_unused_columns=False, per_device_eval_batch_size=4)
    trainer = CSKDTrainer(model=make_vit(num_labels=2, channels=3), args=args, eval_dataset=evaluation)
    with pytest.raises(ExampleLoadError, match=rf"row 6 of the evaluation split \(file {victim}\)"):
        trainer.evaluate()

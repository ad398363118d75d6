import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

from hf_cskd import ClassPairedDataset, DataCollatorForClassPairs
from hf_cskd.targets.pairing import ClassIndex


def labelled(labels, **extra):
    return Dataset.from_dict({"idx": list(range(len(labels))), "label": list(labels), **extra})


def all_pairs(paired, epoch):
    return np.array([paired.pair_index(i, epoch) for i in range(len(paired))])


def test_pairs_share_the_label_and_are_never_self_pairs():
    labels = np.random.default_rng(0).integers(0, 7, size=500)
    labels[labels == 6] = 5  # class 6 empty
    labels[0] = 6  # ... but for a single member
    paired = ClassPairedDataset(labelled(labels))
    for epoch in range(3):
        pairs = all_pairs(paired, epoch)
        assert (labels[pairs] == labels).all()
        assert pairs[0] == 0  # single member of its class: pairs with itself
        assert (pairs[1:] != np.arange(1, len(labels))).all()


def test_pairs_are_a_pure_function_of_seed_epoch_index():
    labels = np.repeat(np.arange(4), 25)
    a, b = ClassPairedDataset(labelled(labels), seed=3), ClassPairedDataset(labelled(labels), seed=3)
    assert (all_pairs(a, 0) == all_pairs(b, 0)).all()
    assert (all_pairs(a, 5) == all_pairs(b, 5)).all()
    assert (all_pairs(a, 0) != all_pairs(a, 1)).mean() > 0.5
    assert (all_pairs(a, 0) != all_pairs(ClassPairedDataset(labelled(labels), seed=4), 0)).mean() > 0.5
    b.set_epoch(5)
    assert [b[i]["pair_idx"] for i in range(len(b))] == list(all_pairs(a, 5))


def test_every_other_member_gets_drawn():
    labels = np.array([0, 1, 0, 1, 0, 0])
    paired = ClassPairedDataset(labelled(labels))
    seen = {paired.pair_index(0, epoch) for epoch in range(100)}
    assert seen == {2, 4, 5}


def test_class_index_on_a_large_column():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 1000, size=200_000)
    index = ClassIndex(labels)
    members = index.order[index.starts[labels] + index.position]
    assert (members == np.arange(len(labels))).all()
    sample = rng.integers(0, len(labels), size=2000)
    pairs = np.array([index.pair(int(i), 0, 0) for i in sample])
    assert (labels[pairs] == labels[sample]).all() and (pairs != sample).all()


def test_labels_are_read_without_decoding_or_transforms():
    features = Features({"image": Image(), "label": ClassLabel(num_classes=3)})
    ds = Dataset.from_dict(
        {"image": [{"bytes": b"not an image", "path": None}] * 9, "label": [0, 1, 2] * 3}, features=features
    )
    ds = ds.shuffle(seed=0).select(range(7))

    def transform(batch):
        raise AssertionError("the transform must not run to read labels")

    ds.set_transform(transform)
    paired = ClassPairedDataset(ds)
    assert paired.index.labels.tolist() == ds.with_format(None).select_columns("label")["label"][:]


def test_torch_dataset_labels_from_items_targets_or_argument():
    class Items(torch.utils.data.Dataset):
        def __init__(self, labels):
            self.items = [{"x": torch.tensor([float(i)]), "labels": y} for i, y in enumerate(labels)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    labels = [0, 1, 1, 0, 2, 2]
    by_items = ClassPairedDataset(Items(labels))
    assert by_items.label_column == "labels" and by_items.index.labels.tolist() == labels
    with_targets = Items(labels)
    with_targets.targets = labels
    assert ClassPairedDataset(with_targets).index.labels.tolist() == labels
    explicit = ClassPairedDataset(Items([0] * 6), labels=labels)
    item = explicit[4]
    assert item["labels"] == 0 and labels[int(item["pair_x"])] == labels[4]


def test_epoch_reaches_persistent_dataloader_workers():
    labels = np.repeat(np.arange(3), 10)
    paired = ClassPairedDataset(labelled(labels))
    loader = DataLoader(paired, batch_size=5, num_workers=2, persistent_workers=True, collate_fn=list)
    for epoch in range(2):
        paired.set_epoch(epoch)
        got = {item["idx"]: item["pair_idx"] for batch in loader for item in batch}
        assert [got[i] for i in range(len(paired))] == list(all_pairs(paired, epoch))


def test_collator_puts_pairs_under_prefixed_names():
    labels = np.repeat(np.arange(2), 4)
    ds = Dataset.from_dict({"pixel_values": np.arange(8, dtype=np.float32)[:, None], "label": labels})
    paired = ClassPairedDataset(ds.with_format("torch"))
    batch = DataCollatorForClassPairs()([paired[i] for i in range(8)])
    assert set(batch) == {"pixel_values", "labels", "pair_pixel_values", "pair_labels"}
    assert torch.equal(batch["labels"], batch["pair_labels"])
    assert not torch.equal(batch["pixel_values"], batch["pair_pixel_values"])
    unpaired = DataCollatorForClassPairs()([ds.with_format("torch")[i] for i in range(3)])
    assert set(unpaired) == {"pixel_values", "labels"}


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate("a b c d e f g h".split())}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def test_collator_pads_anchors_and_pairs_separately():
    tokenizer = make_tokenizer()
    texts = ["a", "a b c d e", "b", "b c"]
    ds = Dataset.from_dict({"text": texts, "label": [0, 0, 1, 1]})
    ds = ds.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    paired = ClassPairedDataset(ds)
    batch = DataCollatorForClassPairs(DataCollatorWithPadding(tokenizer))([paired[0], paired[2]])
    assert batch["input_ids"].shape == (2, 1)
    assert batch["pair_input_ids"].shape == (2, 5)
    assert batch["pair_attention_mask"].sum().item() == 5 + 2


def test_batched_fetch_equals_item_by_item():
    labels = np.repeat(np.arange(3), 5)
    paired = ClassPairedDataset(labelled(labels))
    paired.set_epoch(2)
    indices = [3, 0, 14, 7]
    assert paired.__getitems__(indices) == [paired[i] for i in indices]

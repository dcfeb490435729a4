"""In-memory batches: a DataLoader over a TensorDataset, read from its tensors, equals the loader batch for batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from lcpress.runs.batches import TensorBatches, batches, reads_tensors

DATA = TensorDataset(torch.randn(300, 3, 2), torch.randint(0, 10, (300,)))


def _loaders():
    """(name, factory) of every kind of loader the in-memory path reads; a factory builds a fresh loader."""
    def batch_sampler():
        g = torch.Generator().manual_seed(5)
        return DataLoader(DATA, batch_size=None, sampler=BatchSampler(RandomSampler(DATA, generator=g), 64, False),
                          generator=g)

    return [
        ("shuffled, own generator", lambda: DataLoader(DATA, batch_size=64, shuffle=True,
                                                       generator=torch.Generator().manual_seed(0))),
        ("shuffled, global generator", lambda: DataLoader(DATA, batch_size=64, shuffle=True)),
        ("sequential, drop_last", lambda: DataLoader(DATA, batch_size=70, drop_last=True)),
        ("batch sampler as sampler", batch_sampler),
        ("single samples", lambda: DataLoader(DATA, batch_size=None, shuffle=True,
                                              generator=torch.Generator().manual_seed(1))),
    ]


def _epochs(iterable, n=2):
    return [[t.clone() for t in batch] for _ in range(n) for batch in iterable]


def _generator_state(loader):
    return None if loader.generator is None else loader.generator.get_state()


@pytest.mark.parametrize("name,make", _loaders(), ids=[n for n, _ in _loaders()])
def test_in_memory_batches_equal_the_loaders_and_leave_the_random_streams_where_it_does(name, make):
    torch.manual_seed(7)
    loader = make()
    expected = _epochs(loader)
    expected_rng, expected_generator = torch.get_rng_state(), _generator_state(loader)

    torch.manual_seed(7)
    loader = make()
    assert reads_tensors(loader) and isinstance(batches(loader), TensorBatches)
    got = _epochs(batches(loader))
    assert len(got) == len(expected) and len(batches(loader)) == len(loader)
    for a, b in zip(got, expected):
        assert len(a) == len(b) and all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))
    assert torch.equal(torch.get_rng_state(), expected_rng)  # the next thing drawn from torch's RNG is the same
    if expected_generator is not None:
        assert torch.equal(_generator_state(loader), expected_generator)


class Doubled(TensorDataset):
    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return 2 * x, y


@pytest.mark.parametrize("loader", [
    DataLoader(Doubled(*DATA.tensors), batch_size=64),               # a dataset that transforms its samples
    DataLoader(DATA, batch_size=64, collate_fn=lambda b: b),        # a collate function of the user's
    DataLoader(DATA, batch_size=64, num_workers=1),                  # worker processes
    [(torch.zeros(2, 3), torch.zeros(2))],                           # not a DataLoader at all
], ids=["dataset subclass", "custom collate", "workers", "list"])
def test_other_loaders_are_iterated_as_they_are(loader):
    assert not reads_tensors(loader)
    assert batches(loader) is loader


def test_the_built_in_loss_and_accuracy_take_a_language_models_token_logits():
    from lcpress.runs.training import LOSSES, accuracy

    torch.manual_seed(0)

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11)

        def forward(self, tokens):
            return self.head(self.emb(tokens))  # (batch, tokens, vocabulary), as a causal LM's logits

    tokens = torch.randint(0, 11, (6, 5))
    targets = tokens.roll(-1, dims=1)
    targets[:, -1] = -100  # no next token: left out, as Hugging Face labels do
    model = TinyLM()
    logits = model(tokens)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    torch.testing.assert_close(LOSSES["cross_entropy"](logits, targets), expected)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens, targets), batch_size=4)
    right = (logits.argmax(-1) == targets)[targets != -100]
    assert accuracy(model, loader) == pytest.approx(float(right.float().mean()))
    images = torch.randn(3, 4, 2, 2)  # a segmentation's (batch, classes, h, w) stays torch's layout
    labels = torch.randint(0, 4, (3, 2, 2))
    torch.testing.assert_close(LOSSES["cross_entropy"](images, labels), torch.nn.functional.cross_entropy(images, labels))

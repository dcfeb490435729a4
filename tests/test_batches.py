"""In-memory batches: a DataLoader over a TensorDataset, read from its tensors, equals the loader batch for batch."""

from __future__ import annotations

import itertools

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


def test_calibration_batches_are_a_fixed_fair_sample_of_what_the_loader_yields():
    """A dataset stored sorted by label, a subset sampler for a held-out split: calibration sees the loader's
    indices only, every label, the same batches every time, and the loader's own generator is not advanced."""
    from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

    from lcpress.runs.training import fixed_batches

    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, as an ImageFolder stores it
    dataset = TensorDataset(torch.arange(1000).float().unsqueeze(1), labels)
    shuffled = DataLoader(dataset, batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(3))
    state = shuffled.generator.get_state()
    first = [y for _, y in itertools.islice(fixed_batches(shuffled), 4)]
    assert torch.equal(shuffled.generator.get_state(), state)
    assert len(torch.cat(first).unique()) == 10  # the first 200 stored samples hold classes 0 and 1 only
    again = [y for _, y in itertools.islice(fixed_batches(shuffled), 4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    training_split = list(range(0, 1000, 2))  # the odd indices are held out for validation
    split = DataLoader(dataset, batch_size=50, sampler=SubsetRandomSampler(training_split))
    seen = torch.cat([x.squeeze(1) for x, _ in fixed_batches(split)]).long()
    assert sorted(seen.tolist()) == training_split


def test_the_built_in_mse_takes_a_regressions_flat_targets_and_refuses_other_shapes():
    from lcpress import LcpressError
    from lcpress.runs.training import LOSSES

    output, target = torch.randn(8, 1), torch.randn(8)
    assert torch.equal(LOSSES["mse"](output, target), torch.nn.functional.mse_loss(output, target.unsqueeze(1)))
    with pytest.raises(LcpressError, match=r"train.loss mse: the model outputs \(8, 3\) but the targets are \(8,\)"):
        LOSSES["mse"](torch.randn(8, 3), target)  # torch would broadcast this to (8, 8) … (8, 3)


def test_mu0_auto_over_a_model_train_loss_cannot_read_says_to_set_mu0():
    import lcpress

    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return {"scores": self.fc(x), "features": x}

    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    with pytest.raises(lcpress.LcpressError, match=r"mu0 'auto' measures the gradient of train.loss .*Set schedule.mu0 "
                                                   r"to a number"):
        lcpress.compress(Scores(), {"tasks": [{"layers": ["fc"], "options": {"rank": 2}}], "schedule": {"steps": 1}},
                         lambda model, penalty, step: None, example_input=x[:1], calibration=[(x, y)], progress=False)


def test_an_l_step_that_sees_no_batches_records_no_loss():
    from lcpress.config import TrainConfig
    from lcpress.core.engine import LStep
    from lcpress.runs.training import SupervisedTrainer

    model = torch.nn.Linear(3 * 2, 10)
    loader = DataLoader(TensorDataset(torch.randn(8, 6), torch.randint(0, 10, (8,))), batch_size=4)
    trainer = SupervisedTrainer(loader, TrainConfig(epochs=1, first_epochs=0), progress=False)
    zero = torch.zeros(())
    assert trainer(model, lambda: zero, LStep(0, 1.0, 2)) is None  # first_epochs: 0 trains nothing
    assert isinstance(trainer(model, lambda: zero, LStep(1, 1.0, 2)), float)

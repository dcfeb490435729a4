"""all-MiniLM-L6-v2 stored small: quantizing its embedding tables as well as its encoder's Linear layers.

Half of MiniLM's 22.7 M parameters are its token table (30,522 × 384). A tool that quantizes only Linear
layers leaves that half in float32. Every method here starts from the same dense encoder and is scored on
the same held-out sentences of the Lee news corpus (shipped in the gensim wheel; split by article):

- **torch dynamic int8**: ``torch.ao.quantization.quantize_dynamic`` over ``nn.Linear`` — the encoder's
  Linear layers stored as int8 with a scale per layer (torch's default) or per output channel (its best
  setting here), activations quantized on the fly, int8 kernels; the tables stay float32;
- **lcpress, every layer and table, k = 256**: an 8-bit codebook per layer and table (Lloyd's k-means),
  direct compression — the same 8 bits per weight as int8, stored small and run in float32;
- **lcpress, encoder Linear layers, k = 16**: 4-bit codebook per layer, direct compression;
- **lcpress, every layer and table, k = 16**: the same over the 36 Linear layers and the 3 tables;
- **… with LC**: the same compression reached by LC (L steps distilling the dense embeddings on the
  training sentences);
- **lcpress, storage target**: a codebook size per layer and table (2, 4, 8 or 16 entries) chosen by the
  C step under a budget on the ``storage`` cost model's bits (layers compared by relative error), by LC.

Measured: bytes of the saved file (lcpress's model file; torch's ``state_dict`` for int8), the ``storage``
cost model's bits of every Linear layer and table against their float32 bits, test cosine to the dense embeddings, nearest-neighbour agreement
(every test sentence queries the others: top-1 and recall@10 against the dense model's neighbours), and
wall time.

    python benchmarks/minilm_storage.py [--quick]

Needs ``pip install 'lcpress[transformers]'`` and ``pip install --no-deps gensim`` (the corpus).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import lcpress

sys.path.insert(0, str(Path(__file__).parent))
from common import describe, publish  # noqa: E402
from equal_latency_cases import _minilm  # noqa: E402

minilm = _minilm()
TRAIN = {"epochs": 1, "optimizer": "adam", "lr": 5e-4, "lr_decay": 0.85, "loss": "cosine"}


def _file_bytes(model: nn.Module, torch_format: bool = False) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        if torch_format:
            torch.save(model.state_dict(), path)
        else:
            lcpress.save(model, path.with_suffix(".safetensors"))
            path = path.with_suffix(".safetensors")
        return os.path.getsize(path)


def _lcpress(dense: nn.Module, loaders: dict, layers: list[str], steps: int, options: dict,
             storage_ratio: float | None = None) -> tuple[nn.Module, lcpress.CompressionResult]:
    model = copy.deepcopy(dense)
    model.bert.embeddings.requires_grad_(True)  # the example freezes its tables; here they are compressed
    task = {"layers": layers, "scheme": "quantize", "options": options, "cost": "storage"}
    if storage_ratio is not None:  # layers compared by relative error: by absolute error the table takes the bits
        task.update(target={"cost": "storage", "ratio": storage_ratio}, normalize=True)
    config = {"tasks": [task], "schedule": {"mu0": 5e-3, "factor": 2.5, "steps": steps}, "train": TRAIN,
              "metric": "cosine", "seed": 0}
    result = lcpress.compress(model, config, loaders=(loaders["train"], loaders["validation"]), progress=False)
    return model, result


def _row(label: str, model: nn.Module, dense_bytes: int, loaders: dict, seconds: float, result=None,
         torch_format: bool = False) -> str:
    scores = minilm.retrieval_agreement(model, loaders["test"])
    size = _file_bytes(model, torch_format)
    bits = "—"
    if result is not None:
        layers = result.layers
        bits = f"{layers['storage_after'].sum() / layers['storage_before'].sum():.1%}"
    return (f"| {label} | {size / 1e6:.1f} MB | {dense_bytes / size:.1f}× | {bits} | {scores['cosine']:.4f} | "
            f"{scores['top1']:.3f} | {scores['recall@10']:.3f} | {seconds:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a 48-sentence smoke run: the first block's layers and the tables, 1 LC step")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "minilm_storage.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    loaders = minilm.corpus_loaders(subset=48 if args.quick else None)
    dense = minilm.encoder().eval()
    prefix = "bert.encoder.layer.0." if args.quick else "bert.encoder.layer."  # quick: the first block only
    linears = [n for n, m in dense.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)]
    tables = [n for n, m in dense.named_modules() if isinstance(m, nn.Embedding)]
    everything = linears + tables
    steps = 1 if args.quick else 3
    dense_bytes = _file_bytes(dense)
    rows = [_row("dense (float32)", dense, dense_bytes, loaders, 0.0)]

    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    for label, qconfig in (("per layer", default_dynamic_qconfig), ("per channel", per_channel_dynamic_qconfig)):
        start = time.perf_counter()
        with warnings.catch_warnings():  # torch deprecates its eager int8 path in favour of torchao; it is the peer
            warnings.simplefilter("ignore")
            int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(dense), {nn.Linear: qconfig},
                                                          dtype=torch.qint8)
        rows.append(_row(f"torch dynamic int8, Linear layers, scale {label}", int8, _file_bytes(dense, True),
                         loaders, time.perf_counter() - start, torch_format=True))
    runs = [
        ("lcpress k = 256 (8 bits), every layer and table, direct", everything, 0, {"k": 256, "solver": "lloyd"}, None),
        ("lcpress k = 16 (4 bits), encoder Linear layers, direct", linears, 0, {"k": 16}, None),
        ("lcpress k = 16, every layer and table, direct", everything, 0, {"k": 16}, None),
        (f"lcpress k = 16, every layer and table, LC ({steps} steps)", everything, steps, {"k": 16}, None),
        (f"lcpress k ∈ {{2, 4, 8, 16}} per layer, storage ≤ 10%, LC ({steps} steps)", everything, steps, {"k": None},
         0.10),
    ]
    for label, layers, run_steps, options, ratio in runs:
        start = time.perf_counter()
        model, result = _lcpress(dense, loaders, layers, run_steps, options, ratio)
        rows.append(_row(label, model, dense_bytes, loaders, time.perf_counter() - start, result))
        print(rows[-1], flush=True)
    lines = ["| method | file | smaller by | storage bits (cost model, every layer and table) | test cosine | top-1 neighbour "
             "agreement | recall@10 | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|", *rows]
    preamble = (f"{describe()}. all-MiniLM-L6-v2 (22.7 M parameters, 11.7 M of them in the token table); "
                f"{len(loaders['test'].dataset)} test sentences of the Lee corpus; LC: schedule μ0 = 5e-3 × 2.5^k, "
                f"one pass of Adam (lr 5e-4 × 0.85^k) distilling the dense embeddings per L step. torch's int8 file "
                f"is its state_dict (torch.save); the int8 rows' 'smaller by' compares it with the dense model's "
                f"state_dict saved the same way. lcpress's quantized layers are stored small and run in float32 "
                f"(decoded once); torch's int8 layers run int8 kernels. Command: `python benchmarks/minilm_storage.py`.")
    publish("all-MiniLM-L6-v2 stored small — benchmarks/minilm_storage.py", preamble, lines, args.out, args.quick)


if __name__ == "__main__":
    main()

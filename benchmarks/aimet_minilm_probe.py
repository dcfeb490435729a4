"""Why AIMET's SVD gives no rows for all-MiniLM-L6-v2: the rank its greedy search gets for each target ratio.

AIMET's ``ModelCompressor`` counts MACs on dummy inputs it builds with
``torch.rand(input_shape)``; the encoder takes integer token ids, so it is
wrapped to ignore the float input and encode one fixed sentence. AIMET's layer
database then records each Linear's (batch, tokens, features) output with two
trailing 1s, and its weight-SVD cost of a split layer reads entries 2 and 3 of
that shape where the dense cost reads the last two: every target ratio maps to
rank 1. The table lists, for the first layers, the shapes AIMET recorded and the
rank it computes per ratio.

    bash benchmarks/make_peer_env.sh && .venv-peers/bin/python benchmarks/aimet_minilm_probe.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import equal_latency_cases  # noqa: E402

RATIOS = (0.125, 0.25, 0.5, 0.75, 0.875)


class FixedSentence(nn.Module):
    """The encoder called on one fixed sentence whatever float tensor AIMET passes (AIMET only counts MACs with it)."""

    def __init__(self, encoder: nn.Module, ids: torch.Tensor) -> None:
        super().__init__()
        self.encoder, self.ids = encoder, ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.ids.expand(x.shape[0], -1)
        return self.encoder(input_ids=ids, attention_mask=torch.ones_like(ids))


def main() -> None:
    from aimet_torch.common.cost_calculator import WeightSvdCostCalculator
    from aimet_torch.common.defs import CostMetric
    from aimet_torch.layer_database import LayerDatabase

    case = equal_latency_cases.build("minilm", quick=True)
    ids = case.inputs[1]["input_ids"]
    database = LayerDatabase(FixedSentence(case.dense.eval(), ids), torch.rand(1, ids.shape[1]))
    print(f"| layer | weight shape (AIMET) | output shape (AIMET) | rank at MAC ratio {', '.join(map(str, RATIOS))} |")
    print("|---|---|---|---|")
    for layer in list(database)[:6]:
        ranks = [WeightSvdCostCalculator.calculate_rank_given_comp_ratio(layer, r, CostMetric.mac) for r in RATIOS]
        print(f"| {layer.name} | {tuple(layer.weight_shape)} | {list(layer.output_shape)} | {ranks} |")


if __name__ == "__main__":
    main()

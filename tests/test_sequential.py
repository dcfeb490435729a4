"""Sequential combinations: pruning followed by quantization of the remaining weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lcpress
from lcpress import CStepContext
from lcpress.nn.codecs import DecodedLinear, SparseCodebookWeight
from lcpress.plugins.quantize import Quantized
from lcpress.plugins.sequential import SequentialOptions, SequentialScheme
from lcpress.core.registry import get_registry

STORAGE = get_registry().cost_model("storage")()
PRUNE_THEN_QUANTIZE = [{"scheme": "prune", "options": {"keep_fraction": 0.1}},
                       {"scheme": "quantize", "options": {"k": 4, "zeros": "keep"}}]


def test_the_chain_quantizes_exactly_the_weights_pruning_kept():
    w = torch.randn(40, 30)
    scheme = SequentialScheme(SequentialOptions.from_dict({"parts": PRUNE_THEN_QUANTIZE}))
    delta = scheme.decompress(scheme.compress(w, CStepContext(mu=1.0)))
    kept = torch.topk(w.abs().reshape(-1), 120).indices
    assert torch.equal(torch.nonzero(delta.reshape(-1)).reshape(-1).sort()[0], kept.sort()[0])
    assert torch.unique(delta[delta != 0]).numel() == 4
    from lcpress.linalg.kmeans import optimal_kmeans

    # the kept values get the optimal 4-entry codebook of themselves
    error = float(((w.reshape(-1)[kept] - delta.reshape(-1)[kept]) ** 2).sum())
    assert error == pytest.approx(float(optimal_kmeans(w.reshape(-1)[kept], 4).errors[3]), rel=1e-5)


def test_realized_layer_stores_positions_codes_and_codebook(tmp_path):
    model = nn.Sequential(nn.Linear(60, 50), nn.ReLU(), nn.Linear(50, 3))
    x = torch.randn(4, 60)
    config = {"tasks": [{"layers": ["0"], "scheme": "sequential", "options": {"parts": PRUNE_THEN_QUANTIZE}}],
              "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x, progress=False)
    assert isinstance(model[0], DecodedLinear) and isinstance(model[0].codecs[0], SparseCodebookWeight)
    assert result.max_abs_error <= 1e-6
    form = result.tasks[0].scheme.form(result.states[0])
    assert form == Quantized(4, 300)
    counted = STORAGE.cost(result.graph.specs["0"], form)
    assert counted == 300 * 2 + min(3000, 300 * 12) + (4 + 50) * 32  # codes + mask (smaller than indices) + codebook, bias
    assert counted <= model[0].storage_bits() < counted + 16
    loaded = lcpress.load(lcpress.save(model, tmp_path / "s.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_bad_chains_are_refused():
    base = {"layers": ["*"], "scheme": "sequential"}
    with pytest.raises(lcpress.ConfigError, match="at least two parts"):
        lcpress.load_config({"tasks": [{**base, "options": {"parts": [{"scheme": "prune"}]}}]})
    with pytest.raises(lcpress.ConfigError, match="reshape: 1"):
        lcpress.load_config({"tasks": [{**base, "options": {"parts": [
            {"scheme": "prune", "options": {"keep": 2}}, {"scheme": "low_rank", "options": {"rank": 1}, "reshape": 2}]}}]})
    with pytest.raises(lcpress.ConfigError, match="zeros"):
        lcpress.load_config({"tasks": [{**base, "options": {"parts": [
            {"scheme": "prune", "options": {"keep": 2}}, {"scheme": "quantize", "options": {"k": None, "zeros": "keep"}}]}}]})
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(lcpress.ConfigError, match=r"sequential part 1 \(quantize\) would choose its own form"):
        lcpress.compress(model, {"tasks": [{**base, "options": {"parts": [
            {"scheme": "prune", "options": {"keep": 2}}, {"scheme": "quantize", "options": {"k": None}}]}}],
            "schedule": {"steps": 0}}, example_input=torch.randn(1, 8), progress=False)

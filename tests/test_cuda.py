"""`device: cuda`: L and C steps (decompositions included) run on the GPU and choose what the CPU chooses.

Skipped, with the reason, where torch sees no CUDA device.
"""

from __future__ import annotations

import copy

import pytest
import torch

import lcpress
from lcpress.core.plan import load_config, plan
from lcpress.runs.demo import digits_cnn, digits_loaders
from lcpress.core.engine import LCEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")

TASKS = {
    "low_rank": {"layers": ["*"], "options": {"rank_multiple": 8, "shape": "auto"},
                 "target": {"cost": "flops", "ratio": 0.3}},
    "alds": {"layers": ["2", "5", "8"], "scheme": "alds", "options": {"groups": [1, 2, 4], "rank_multiple": 4},
             "target": {"cost": "flops", "ratio": 0.4}},
}


def _direct_compression(model, task, device):
    config = load_config({"tasks": [task], "schedule": {"steps": 0}, "device": device})
    model = copy.deepcopy(model).to(device)
    planned = plan(model, config, torch.randn(1, 1, 8, 8, device=device))
    engine = LCEngine(model, planned.tasks, config.schedule, None, graph=planned.graph,
                      cost_models=planned.cost_models, progress=False)
    engine.c_step(0, config.schedule.mu0)
    return engine


@pytest.mark.parametrize("scheme", TASKS)
def test_c_step_runs_on_the_gpu_and_chooses_the_cpu_forms(scheme):
    torch.manual_seed(0)
    model = digits_cnn()
    cpu = _direct_compression(model, TASKS[scheme], "cpu")
    gpu = _direct_compression(model, TASKS[scheme], "cuda")
    assert gpu.forms() == cpu.forms()
    for i, state in enumerate(gpu.states):
        assert all(t.device.type == "cuda" for t in state.tensors.values()), "the C step moved θ off the GPU"
        delta_gpu = gpu.tasks[i].scheme.decompress(state).cpu()
        delta_cpu = cpu.tasks[i].scheme.decompress(cpu.states[i])
        assert torch.allclose(delta_gpu, delta_cpu, atol=1e-4, rtol=1e-4)


def test_compress_with_device_cuda_trains_and_realizes_on_the_gpu(tmp_path):
    torch.manual_seed(0)
    config = {"tasks": [TASKS["low_rank"]], "schedule": {"mu0": 3e-2, "factor": 1.5, "steps": 2},
              "train": {"epochs": 1}, "device": "cuda", "output_dir": str(tmp_path / "run")}
    result = lcpress.compress(digits_cnn(), config, loaders=digits_loaders(64, 0), progress=False)
    assert all(p.device.type == "cuda" for p in result.model.parameters())
    assert any(r.realized for r in result.records)
    assert result.max_abs_error < 1e-4
    again = lcpress.load(tmp_path / "run" / "model.safetensors", map_location="cuda")
    x = torch.randn(4, 1, 8, 8, device="cuda")
    with torch.no_grad():
        assert torch.allclose(again(x), result.model(x), atol=1e-5)

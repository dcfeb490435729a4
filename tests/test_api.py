"""lcpress.compress from a notebook: user train/eval functions, budgets, results."""

from __future__ import annotations

import copy
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lcpress


def _data(n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    return x, y


def _trained_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model



def _one_sgd_step(x, y):
    """A train_fn of one SGD step on ``(x, y)`` with the penalty."""

    def train_fn(model, penalty, step):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss = F.cross_entropy(model(x), y) + penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return train_fn

def test_compress_with_user_functions_realizes_in_place():
    model = _trained_mlp()
    x, y = _data()
    calls = []

    def train_fn(model, penalty, step):
        calls.append(step)
        opt = torch.optim.SGD(model.parameters(), lr=0.05 * 0.9**step.index)
        for _ in range(10):
            loss = F.cross_entropy(model(x), y) + penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    def eval_fn(model):
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    config = {
        "tasks": [{"layers": ["0", "2"], "options": {"rank_multiple": 4}, "target": {"cost": "params", "ratio": 0.4}}],
        "schedule": {"mu0": 1e-2, "factor": 1.5, "steps": 3},
    }
    result = lcpress.compress(model, config, train_fn, eval_fn, example_input=x[:1])
    assert [c.index for c in calls] == [0, 1, 2]
    assert result.model is model
    assert isinstance(model[2], nn.Sequential)  # realized in place, name kept
    assert isinstance(result.history, pd.DataFrame) and list(result.history["step"]) == [0, 1, 2, 3]
    assert {"mu", "train_loss", "distance", "metric", "cost_params", "cost_flops"} <= set(result.history.columns)
    dense_params = 32 * 64 + 64 + 64 * 64 + 64
    compressed = result.layers.set_index("layer").loc[["0", "2"], "params_after"].sum()
    assert compressed <= 0.4 * dense_params
    assert result.max_abs_error < 1e-5
    assert result.metric == pytest.approx(eval_fn(model), abs=1e-6)
    assert result.metric >= result.dense_metric - 0.1


def test_direct_compression_only_needs_no_training():
    model = _trained_mlp()
    x, _ = _data()
    result = lcpress.compress(model, {"tasks": [{"layers": ["*"], "options": {"rank": 8}}], "schedule": {"steps": 0}},
                              example_input=x[:4])
    assert len(result.history) == 1
    assert [r.realized for r in result.records] == [True, True, False]  # 64→2 at rank 8 would cost more than dense
    assert "rank 8" in result.summary()



def test_a_frozen_layer_is_refused_before_training_and_compresses_directly():
    model = _trained_mlp()
    model[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = _data()
    config = {"tasks": [{"layers": ["2"], "options": {"rank": 8}}], "schedule": {"steps": 2}}
    trained = []
    with pytest.raises(lcpress.ConfigError, match=r"2\.weight is frozen.*requires_grad_\(True\).*steps: 0"):
        lcpress.compress(model, config, lambda m, p, s: trained.append(s), lambda m: 0.0, example_input=x[:1])
    assert not trained and isinstance(model[2], nn.Linear)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    result = lcpress.compress(model, {**config, "schedule": {"steps": 0}}, example_input=x[:1])
    assert isinstance(model[2], nn.Sequential) and result.max_abs_error < 1e-5


@pytest.mark.parametrize("batch, shown", [
    (lambda x, y: {"input": x, "label": y}, r"a dict with keys \['input', 'label'\]"),
    (lambda x, y: (x, y, y), "a tuple of 3 items"),
    (lambda x, y: x, "a Tensor"),
])
def test_loaders_that_do_not_yield_pairs_are_refused_before_anything_runs(batch, shown):
    model = _trained_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data()
    good = [(x[:64], y[:64])]
    bad = [batch(x[:64], y[:64])]
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 8}}], "schedule": {"steps": 1}}
    for loaders, which in [((bad, good), "train"), ((good, bad), "eval")]:
        with pytest.raises(lcpress.ConfigError, match=f"the {which} loader yields {shown}.*pairs"):
            lcpress.compress(model, config, loaders=loaders)
    assert isinstance(model[0], nn.Linear)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("returned, named", [
    ({"accuracy": 0.9, "loss": 0.3}, r"eval_fn returned dict .*one number.*result\['accuracy'\]"),
    (None, "eval_fn returned NoneType None: it must return one number"),
    ("0.9", "eval_fn returned str '0.9': it must return one number"),
    (True, "eval_fn returned bool True: it must return one number"),
])
def test_an_eval_fn_that_returns_no_number_is_named_before_training(returned, named):
    model = _trained_mlp()
    x, _ = _data()
    trained = []
    with pytest.raises(lcpress.LcpressError, match=named):
        lcpress.compress(model, {"tasks": [{"layers": ["0"], "options": {"rank": 8}}], "schedule": {"steps": 1}},
                         lambda m, p, s: trained.append(s), lambda m: returned, example_input=x[:1])
    assert not trained


def test_a_train_fn_that_returns_no_number_is_named():
    model = _trained_mlp()
    x, _ = _data()
    with pytest.raises(lcpress.LcpressError, match=r"train_fn returned dict .*training loss as one number, or None"):
        lcpress.compress(model, {"tasks": [{"layers": ["0"], "options": {"rank": 8}}], "schedule": {"steps": 1}},
                         lambda m, p, s: {"loss": 0.1}, example_input=x[:1])


def test_metrics_and_losses_given_as_tensors_are_recorded_as_numbers():
    model = _trained_mlp()
    x, y = _data()
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 8}}], "schedule": {"steps": 1}}
    result = lcpress.compress(model, config, lambda m, p, s: p() + torch.tensor(0.25),
                              lambda m: (m(x).argmax(1) == y).float().mean(), example_input=x[:1])
    assert isinstance(result.metric, float) and isinstance(result.dense_metric, float)
    loss = result.history["train_loss"].iloc[1]
    assert isinstance(loss, float) and loss >= 0.25  # the penalty is never negative
    assert all(isinstance(v, float) for v in result.history["metric"])


def test_a_compiled_model_compresses_under_its_own_layer_names_and_saves_as_the_plain_model(tmp_path):
    model = _trained_mlp()
    compiled = torch.compile(model, backend="eager")  # no C compiler needed
    x, _ = _data()
    result = lcpress.compress(compiled, {"tasks": [{"layers": ["0", "2"], "options": {"rank": 8}}],
                                         "schedule": {"steps": 0}}, example_input=x[:1])
    assert result.model is compiled and list(result.layers["layer"]) == ["0", "2", "4"]  # no "_orig_mod." prefix
    assert isinstance(model[0], nn.Sequential) and isinstance(model[2], nn.Sequential)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    path = result.save(tmp_path / "m.safetensors")
    plain = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    into_compiled = torch.compile(copy.deepcopy(plain), backend="eager")
    assert lcpress.load(path, model=into_compiled) is into_compiled
    for loaded in (lcpress.load(path), lcpress.load(path, model=plain), into_compiled):
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_a_loader_that_changes_as_it_is_read_is_read_only_by_the_trainer():
    """A custom iterable without a length (an epoch counter inside) is read once per epoch: no look-ahead."""
    x, y = _data()

    class Epochs:
        reads = 0

        def __iter__(self):
            Epochs.reads += 1
            return iter([(x[:128], y[:128]), (x[128:], y[128:])])

    config = {"tasks": [{"layers": ["0"], "options": {"rank": 8}}], "schedule": {"steps": 2, "mu0": 1e-3},
              "train": {"epochs": 1}}
    lcpress.compress(_trained_mlp(), config, loaders=(Epochs(), None), example_input=x[:1], progress=False)
    assert Epochs.reads == 2


class _Output(dict):
    """What a Hugging Face model returns: a dict whose fields are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Returns(nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.net, self.wrap = _trained_mlp(), wrap

    def forward(self, x):
        return self.wrap(self.net(x))


@pytest.mark.parametrize("wrap", [lambda out: _Output(logits=out, hidden=out), lambda out: (out, out.detach() * 0)],
                         ids=["output object with logits", "tuple"])
def test_the_built_in_trainer_and_accuracy_take_logits_from_an_output_object_or_a_tuple(wrap):
    x, y = _data()
    model = _Returns(wrap)
    plain = copy.deepcopy(model.net)
    batches = [(x[:128], y[:128]), (x[128:], y[128:])]
    result = lcpress.compress(model, {"tasks": [{"layers": ["net.2"], "options": {"rank": 8}}],
                                      "schedule": {"steps": 1}, "train": {"epochs": 1}}, loaders=(batches, batches),
                              progress=False)
    assert result.dense_metric == pytest.approx(lcpress.accuracy(plain, batches))
    assert result.history["train_loss"].iloc[1] > 0 and isinstance(model.net[2], nn.Sequential)


def test_an_output_without_logits_is_named_with_its_fields():
    x, y = _data()
    model = _Returns(lambda out: _Output(last_hidden_state=out, pooler_output=out))
    with pytest.raises(lcpress.LcpressError, match=r"returned a _Output \(fields: last_hidden_state, pooler_output\)"):
        lcpress.compress(model, {"tasks": [{"layers": ["net.2"], "options": {"rank": 8}}], "schedule": {"steps": 1}},
                         loaders=([(x, y)], [(x, y)]), progress=False)


def test_a_parametrized_weight_is_refused_before_training_and_folding_it_as_told_works():
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import weight_norm

    x, y = _data()
    model = _trained_mlp()
    weight_norm(model[2])
    config = {"tasks": [{"layers": ["2"], "options": {"rank": 8}}], "schedule": {"steps": 2, "mu0": 1e-2}}

    train_fn = _one_sgd_step(x, y)

    with pytest.raises(lcpress.ConfigError, match=r"layer '2' has a parametrized weight \(_WeightNorm\).*"
                                                  r"remove_parametrizations"):
        lcpress.compress(model, config, train_fn, example_input=x[:1])
    # without L steps too: Δ(θ) written into a recomputed weight is lost, so evaluations would see the dense layer
    with pytest.raises(lcpress.ConfigError, match=r"parametrized weight .*cannot write Δ\(θ\) into"):
        lcpress.compress(model, dict(config, schedule={"steps": 0}), example_input=x[:1])
    assert parametrize.is_parametrized(model[2])
    parametrize.remove_parametrizations(model[2], "weight")
    result = lcpress.compress(model, config, train_fn, example_input=x[:1])
    assert isinstance(model[2], nn.Sequential) and len(result.history) == 3


def test_a_weight_torch_prune_recomputes_is_refused_before_training_and_removing_it_as_told_works():
    import torch.nn.utils.prune as torch_prune

    x, y = _data()
    model = _trained_mlp()
    torch_prune.l1_unstructured(model[2], "weight", 0.5)
    config = {"tasks": [{"layers": ["*"], "options": {"rank": 8}}], "schedule": {"steps": 2, "mu0": 1e-2}}
    with pytest.raises(lcpress.ConfigError, match=r"layer '2' has a weight computed before every call "
                                                  r"\(torch.nn.utils.prune's.*prune.remove\("):
        lcpress.compress(model, config, _one_sgd_step(x, y), example_input=x[:1])
    torch_prune.remove(model[2], "weight")
    result = lcpress.compress(model, config, _one_sgd_step(x, y), example_input=x[:1])
    assert isinstance(model[2], nn.Sequential) and len(result.history) == 3


def test_calibration_passes_run_a_model_whose_output_has_no_logits():
    """Calibration only needs the layers' inputs; an encoder's output object is fine there."""
    x, _ = _data()
    model = _Returns(lambda out: _Output(last_hidden_state=out))
    config = {"tasks": [{"layers": ["net.2"], "options": {"rank": 8, "error": "output"}}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x[:1], calibration=[x[:128], x[128:]], progress=False)
    assert isinstance(model.net[2], nn.Sequential) and result.max_abs_error < 1e-4


def test_auto_mu0_with_calibration_inputs_but_no_targets_starts_at_the_fallback_and_says_why(caplog):
    from lcpress.core.schedule import FALLBACK_MU0

    x, y = _data()

    train_fn = _one_sgd_step(x, y)

    config = {"tasks": [{"layers": ["2"], "options": {"rank": 8}}], "schedule": {"steps": 1}}
    with caplog.at_level("WARNING", logger="lcpress"):
        result = lcpress.compress(_trained_mlp(), config, train_fn, example_input=x[:1],
                                  calibration=[x[:128], x[128:]], progress=False)
    assert result.history["mu"].iloc[0] == FALLBACK_MU0
    assert "hold no targets (a Tensor, not an (inputs, targets) pair)" in caplog.text


def test_the_result_shows_as_a_few_lines_in_a_notebook():
    model = _trained_mlp()
    x, y = _data()
    result = lcpress.compress(model, {"tasks": [{"layers": ["*"], "options": {"rank": 8}}], "schedule": {"steps": 0}},
                              example_input=x[:4], eval_fn=lambda m: float((m(x).argmax(1) == y).float().mean()))
    shown = repr(result)
    assert "tensor(" not in shown and "\n" not in shown and len(shown) < 300
    assert "layers=3 compressed (2 realized)" in shown
    assert f"metric={result.dense_metric:.4f} → {result.metric:.4f}" in shown
    params = result.totals["params_after"] / result.totals["params_before"]
    assert f"params={params:.1%} of dense" in shown


def test_loaders_give_default_trainer_and_accuracy(digits):
    from lcpress.runs.demo import digits_cnn

    train, test = digits
    model = digits_cnn()
    result = lcpress.compress(
        model,
        {"tasks": [{"layers": ["8"], "options": {"rank": 16}}], "schedule": {"steps": 1}, "train": {"epochs": 1}},
        loaders=(train, test),
    )
    assert 0.0 <= result.metric <= 1.0
    assert result.history["train_loss"].iloc[1] > 0


def test_finetune_trains_the_realized_model_and_keeps_what_lc_reached(digits, tmp_path):
    import json

    from lcpress.runs.demo import digits_cnn

    torch.manual_seed(0)
    model = digits_cnn()
    config = {"tasks": [{"layers": ["5", "8"], "options": {"rank": 8}}], "schedule": {"steps": 1},
              "train": {"epochs": 1}, "finetune": {"steps": 1}, "output_dir": str(tmp_path / "run")}
    result = lcpress.compress(model, config, loaders=digits, progress=False)
    assert result.metric_before_finetune is not None and result.metric is not None
    assert result.max_abs_error <= 1e-4  # checked against Δ(θ) before fine-tuning moved the thin layers
    thin = model[8][0].weight.detach()  # realized Linear(2048→8), trained after realization
    lc_factor = result.states[1].tensors["b"]
    assert thin.shape == lc_factor.shape and not torch.allclose(thin, lc_factor)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["fine_tuned"] and info["metric"] == result.metric
    loaded = lcpress.load(tmp_path / "run" / "model.safetensors")
    x = next(iter(digits[1]))[0][:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_finetune_lr_sets_the_fine_tuning_passes_learning_rate(digits, monkeypatch):
    """finetune.lr: fine-tuning pass k trains at finetune.lr · lr_decay^k; the L steps keep train.lr · lr_decay^k."""
    from lcpress.runs.demo import digits_cnn
    from lcpress.runs.training import SupervisedTrainer

    seen = []
    original = SupervisedTrainer.__call__

    def recording(self, model, penalty, step):
        loss = original(self, model, penalty, step)
        seen.append((self.description, step.index, self.optimizer.param_groups[0]["lr"]))
        return loss

    monkeypatch.setattr(SupervisedTrainer, "__call__", recording)
    torch.manual_seed(0)
    config = {"tasks": [{"layers": ["8"], "options": {"rank": 8}}], "schedule": {"steps": 2},
              "train": {"epochs": 1, "lr": 0.02, "lr_decay": 0.5}, "finetune": {"steps": 2, "lr": 0.003},
              "checkpoint": False}
    lcpress.compress(digits_cnn(), config, loaders=digits, progress=False)
    rates = [(d.startswith("fine-tuning"), i, lr) for d, i, lr in seen]
    assert [(tuned, i) for tuned, i, _ in rates] == [(False, 0), (False, 1), (True, 2), (True, 3)]
    assert [lr for *_, lr in rates] == pytest.approx([0.02, 0.01, 0.003, 0.0015])


def test_finetune_lr_is_refused_with_your_own_train_fn():
    model = nn.Sequential(nn.Linear(4, 4))
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 2}}], "schedule": {"steps": 0},
              "finetune": {"steps": 1, "lr": 1e-3}}
    with pytest.raises(lcpress.ConfigError, match="finetune.lr sets the built-in trainer's learning rate"):
        lcpress.compress(model, config, train_fn=lambda m, penalty, step: 0.0, example_input=torch.randn(1, 4),
                         progress=False)


def test_finetune_needs_a_training_function():
    model = nn.Sequential(nn.Linear(4, 4))
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 2}}], "schedule": {"steps": 0}, "finetune": {"steps": 1}}
    with pytest.raises(lcpress.ConfigError, match="finetune.steps > 0 needs a training function"):
        lcpress.compress(model, config, example_input=torch.randn(1, 4), progress=False)


def test_a_model_that_cannot_be_deep_copied_compresses():
    """Realization is checked against the dense output taken beforehand, not against a copy of the model."""
    import threading

    class Locked(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
            self.lock = threading.Lock()  # deepcopy: "cannot pickle '_thread.lock' object"

    torch.manual_seed(0)
    model = Locked()
    result = lcpress.compress(model, {"tasks": [{"layers": ["*"], "options": {"rank": 4, "rank_multiple": 1}}],
                                      "schedule": {"steps": 0}}, example_input=torch.randn(3, 16))
    assert all(r.realized for r in result.records) and result.max_abs_error < 1e-5


def test_a_train_fn_that_never_calls_the_penalty_is_stopped_after_its_first_l_step():
    """Without penalty() the L steps never pull w towards Δ(θ): say so, instead of a silent non-converged run."""
    x, y = _data()
    steps = []

    def train_fn(model, penalty, step):
        steps.append(step.index)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss = F.cross_entropy(model(x), y)  # the penalty forgotten
        opt.zero_grad()
        loss.backward()
        opt.step()

    config = {"tasks": [{"layers": ["0"], "options": {"rank": 4}}], "schedule": {"steps": 3, "mu0": 0.01}}
    with pytest.raises(lcpress.LcpressError, match=r"trained the compressed weights without calling penalty\(\).*\+ penalty"):
        lcpress.compress(_trained_mlp(), config, train_fn, lambda m: 0.0, example_input=x[:1], progress=False)
    assert steps == [0]


def test_one_calibration_batch_given_alone_counts_as_one_batch():
    """calibration=(x, y), as a notebook writes it, is [(x, y)]: not x and y taken as two batches of inputs."""
    from lcpress.runs.compress import _one_or_many

    x, y = _data()
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 8}}], "schedule": {"steps": 1}}
    runs = [lcpress.compress(_trained_mlp(), config, _one_sgd_step(x, y), example_input=x[:1], calibration=c,
                             progress=False) for c in ((x, y), [(x, y)])]
    assert runs[0].history["mu"].tolist() == runs[1].history["mu"].tolist()
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)

    assert _one_or_many(x)[0] is x and _one_or_many({"input_ids": x})[0]["input_ids"] is x
    two_batches = (x[:8], x[8:16])  # same shape and dtype: batches of inputs, not inputs and labels
    assert _one_or_many(two_batches) is two_batches and _one_or_many([(x, y)])[0][1] is y


def test_a_train_fn_whose_optimizer_holds_another_models_parameters_is_named(caplog):
    """An optimizer built once, for the model before it was copied (a sweep, a notebook cell run twice)."""
    x, y = _data()
    stale = torch.optim.SGD(_trained_mlp().parameters(), lr=0.05)

    def train_fn(model, penalty, step):
        loss = F.cross_entropy(model(x), y) + penalty()
        stale.zero_grad()
        loss.backward()
        stale.step()

    config = {"tasks": [{"layers": ["0"], "options": {"rank": 4}}], "schedule": {"steps": 2, "mu0": 0.01}}
    with caplog.at_level("WARNING", logger="lcpress"):
        lcpress.compress(_trained_mlp(), config, train_fn, lambda m: 0.0, example_input=x[:1], progress=False)
    said = [r.message for r in caplog.records if "changed none of the compressed weights" in r.message]
    assert len(said) == 1 and said[0].startswith("LC step 1:")


@pytest.mark.parametrize("training", [True, False])
def test_eval_fn_sees_the_model_in_eval_mode_and_the_model_comes_back_in_its_own_mode(training):
    """An eval_fn that does not call model.eval() still scores without dropout; the caller's mode is kept."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Dropout(0.5), nn.ReLU(), nn.Linear(64, 2)).train(training)
    x, y = _data()
    modes = {"train_fn": set(), "eval_fn": set()}

    def train_fn(model, penalty, step):
        modes["train_fn"].add(model.training)
        _one_sgd_step(x, y)(model, penalty, step)

    def eval_fn(model):
        modes["eval_fn"].add(model.training)
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    config = {"tasks": [{"layers": ["0"], "options": {"rank": 8}}], "schedule": {"mu0": 1e-2, "steps": 2}}
    result = lcpress.compress(model, config, train_fn, eval_fn, example_input=x[:1], progress=False)
    assert modes == {"train_fn": {True}, "eval_fn": {False}}
    assert model.training is training and all(m.training is training for m in model.modules())
    assert result.metric == pytest.approx(eval_fn(model.eval()))  # no dropout noise in the recorded metric


def test_calibration_batches_give_the_example_input_when_none_is_passed():
    model = _trained_mlp()
    x, y = _data()
    config = {"tasks": [{"layers": ["0"], "options": {"rank": 8}}], "schedule": {"mu0": 1e-2, "steps": 1}}
    result = lcpress.compress(model, config, _one_sgd_step(x, y), calibration=(x, y), progress=False)
    assert result.graph.specs["0"].input_shape == (1, 32)  # one sample, as from a loader
    with pytest.raises(lcpress.ConfigError, match="give example_input=.*, loaders= or calibration="):
        lcpress.compress(_trained_mlp(), config, _one_sgd_step(x, y), progress=False)


def test_each_submodule_comes_back_in_the_mode_it_came_in():
    """A training model with a BatchNorm frozen in eval mode (bn.eval()) is trained and handed back so."""
    x, y = _data()
    model = nn.Sequential(nn.Linear(x.shape[1], 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    model.train()
    model[1].eval()
    frozen = model[1].running_mean.clone()
    config = {"tasks": [{"layers": ["3"], "options": {"rank": 4, "rank_multiple": 1}}],
              "schedule": {"steps": 1, "mu0": 1e-2}, "batchnorm": {"recalibrate": False}}
    lcpress.compress(model, config, _one_sgd_step(x, y), example_input=x[:2], progress=False)
    assert model.training and not model[1].training and all(m.training for m in model[3].modules())
    assert torch.equal(model[1].running_mean, frozen)  # the L steps left it frozen too


def test_compress_leaves_the_callers_random_generator_as_it_was():
    x, y = _data()
    model = _trained_mlp()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    lcpress.compress(model, {"tasks": [{"layers": ["2"], "options": {"rank": 4}}], "schedule": {"steps": 1}},
                     _one_sgd_step(x, y), example_input=x[:1], progress=False)
    assert torch.equal(torch.rand(3), expected)

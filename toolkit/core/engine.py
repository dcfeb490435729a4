"""The LC (learning–compression) loop.

Solves ``min L(w) s.t. w = Δ(θ)`` along an increasing penalty μ_k = μ0·a^k:

* **DC step** (step 0): θ ← Π(w) for the trained weights; forms are selected
  at μ0 (at μ = 0 the objective picks the cheapest form everywhere, which is
  what the LC toolkit does and ``schedule.dc_mu: 0`` asks for).
* **L step**: the user's training loop on ``L(w) + μ/2‖w − Δ(θ) − λ/μ‖²``;
  the engine provides the penalty term as a callable.
* **C step**: θ ← argmin ``μ/2‖w − λ/μ − Δ(θ)‖² + α·C(θ)`` per task, through the
  scheme plugin and the core's selection (α, or a global budget).
* **multipliers** (augmented Lagrangian only): λ ← λ − μ(w − Δ(θ)).

A scheme that measures error on its layer's outputs
(:meth:`~lcpress.Scheme.output_error`) gets the metric Σ of the layer's inputs
— from a calibration pass before the DC step, then from each L step's forward
passes — and its penalty is ``μ/2·tr((w − Δ − λ/μ) Σ (…)ᵀ)`` (see
:mod:`lcpress.core.moments`).

After every step the engine records one row of history and, when given a
checkpointer, saves everything needed to resume bit-for-bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Protocol, Sequence

import pandas as pd
import torch
from torch import nn

from lcpress.atomic import replacing
from lcpress.config import ScheduleConfig
from lcpress.core import budget as budget_mod
from lcpress.core import coupled as coupled_mod
from lcpress.core import sensitivity as sensitivity_mod
from lcpress.core.costmodel import CostModel, batch_text
from lcpress.core.forms import Dense, Form, LayerSpec
from lcpress.core.graph import ModelGraph
from lcpress.core.guard import plugin_call
from lcpress.core.moments import MomentCollector, squared_distance
from lcpress.core.penalty import QuadraticPenalty
from lcpress.core.plan import Task
from lcpress.core.realize import load_compressed
from lcpress.core.registry import plugin_label
from lcpress.core.schedule import initial_mu, next_mu
from lcpress.core.scheme import Candidates, Coupled, CStepContext, State
from lcpress.core.surgery import get_module, in_mode
from lcpress.core.tree import join_tensors, split_tensors
from lcpress.errors import ConfigError, CStepError, LcpressError
from lcpress.linalg.finite import all_finite
from lcpress.progress import progress_bar, status_line

log = logging.getLogger("lcpress.engine")

#: How many times its norm the compressed weights may grow in one L step before the step counts as diverged.
#: Training a trained model under a penalty towards a compressed form shrinks or barely moves them.
DIVERGED = 100.0


@dataclass(frozen=True)
class LStep:
    """What the user's training function is told about the L step it runs."""

    index: int  # 0-based LC step
    mu: float
    steps: int  # total LC steps of the run


Penalty = Callable[[], torch.Tensor]
TrainFn = Callable[[nn.Module, Penalty, LStep], "float | None"]
EvalFn = Callable[[nn.Module], float]
CalibrateFn = Callable[[nn.Module], None]


def returned_number(value: Any, function: str, meaning: str) -> float:
    """What a user function returned, as one float; anything else is named, with what to return instead."""
    try:
        if isinstance(value, (str, bytes, bool)):  # float("0.9") and float(True) would pass as a metric
            raise TypeError
        return float(value.detach() if isinstance(value, torch.Tensor) else value)  # `return loss` is common
    except (TypeError, ValueError, RuntimeError):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        hint = ""
        if isinstance(value, dict) and value:
            hint = f"; return one of its values, e.g. result[{next(iter(value))!r}]"
        raise LcpressError(f"{function} returned {type(value).__name__} {shown}: it must return {meaning}{hint}") \
            from None


def metric_value(value: Any) -> float:
    """``eval_fn``'s result: one number, the metric every step records."""
    return returned_number(value, "eval_fn", "one number, the metric lcpress records and reports (e.g. accuracy)")


def evaluated(model: nn.Module, eval_fn: EvalFn) -> float:
    """``eval_fn(model)`` with the model in eval mode (dropout off, BatchNorm on its running statistics).

    An L step leaves the model in training mode, and an ``eval_fn`` written for a notebook rarely calls
    ``model.eval()`` itself: its metric would move with dropout's random masks. The mode is restored after.
    """
    with in_mode(model, training=False):
        return metric_value(eval_fn(model))


class Checkpointer(Protocol):
    def save(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...


class LCEngine:
    """Runs DC, then L/C(/λ) steps over the μ schedule, for a list of tasks."""

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        schedule: ScheduleConfig,
        train_fn: TrainFn | None,
        eval_fn: EvalFn | None = None,
        *,
        graph: ModelGraph | None = None,
        cost_models: dict[str, CostModel] | None = None,
        seed: int = 0,
        checkpointer: Checkpointer | None = None,
        history_csv: str | Path | None = None,
        progress: bool = True,
        before_eval: Callable[[nn.Module], None] | None = None,
        gradient_norm: Callable[[nn.Module, list[nn.Parameter]], float] | None = None,
        calibrate: CalibrateFn | None = None,
        refuse_all_dense: bool = True,
    ) -> None:
        self.model = model
        self.tasks = list(tasks)
        self.schedule = schedule
        self.train_fn = train_fn
        self.eval_fn = eval_fn
        self.graph = graph
        #: every cost model of the run by name: targets are priced by these, and each history row totals them
        self.cost_models = cost_models or {}
        self.seed = seed
        self.checkpointer = checkpointer
        self.history_csv = Path(history_csv) if history_csv is not None else None
        self.progress = progress
        #: runs on the model holding Δ(θ) before every evaluation (re-estimates BatchNorm statistics)
        self.before_eval = before_eval
        #: ‖∇ training loss‖ over the given parameters, for ``mu0: auto``; None when the run has no loss to measure
        self.gradient_norm = gradient_norm
        #: runs the model forward on training data, so the layers that need their inputs' moments see some
        self.calibrate = calibrate
        #: stop (or say so) when a selection could compress nothing: α = 0 with no target, α under a cost no form
        #: lowers, a target that cannot steer the choice; the conformance kit probes such cases on purpose and
        #: turns it off
        self.refuse_all_dense = refuse_all_dense
        #: the input metric Σ of each task whose scheme measures error on outputs (None: weight space)
        self.metrics: list[torch.Tensor | None] = [None] * len(self.tasks)
        self.collector = self._moment_collector()
        #: submodules in eval mode inside a model that came in training mode: the L steps keep them so
        self.frozen = [m for m in model.modules() if not m.training] if model.training else []
        self.states: list[State | None] = [None] * len(self.tasks)
        self.multipliers: list[torch.Tensor | None] = [None] * len(self.tasks)
        self.next_step = 0  # 0 = the DC step has not run yet
        self.checkpointed: int | None = None  # the last LC step whose checkpoint is written (this run or resumed)
        self._said_untrained = False  # warned that an L step left the compressed weights unchanged
        self.history: list[dict[str, Any]] = []
        self.selection: dict[int, budget_mod.Choice] = {}
        self._told: set[int] = set()  # groups whose unreachable target was reported (once per run)
        #: task index → its measured sensitivity curve (``sensitivity: measured``), from the first C step under a target
        self.curves: dict[int, sensitivity_mod.Curve] = {}
        self._check_sensitivity()

    # ---------------------------------------------------------------- the loop
    def run(self) -> pd.DataFrame:
        """Run (or finish, after :meth:`restore`) the whole schedule; returns the history.

        One row per LC step (step 0 is the direct compression): μ, training
        loss, ‖w − Δ(θ)‖, the metric of the compressed model, the total cost
        under every reported cost model, and seconds taken.
        """
        total = self.schedule.steps
        if self.next_step == 0:
            self._set_rng(0)
            start = time.perf_counter()
            mu0 = self.direct_compression()
            row = self._finish_step(0, mu0, None, time.perf_counter() - start)
            status_line(f"LC step 0/{total} (direct compression): {_summary(row)}", enabled=self.progress)
        with progress_bar(total=total, initial=self.next_step - 1, desc="LC steps", enabled=self.progress) as bar, \
                self._saying_what_is_kept():
            for k in range(self.next_step, total + 1):
                mu = next_mu(self.schedule, self.history, k)
                start = time.perf_counter()
                before = self._weight_norm()
                loss = self.l_step(k, mu)
                self._check_l_step(k, mu, loss, before)
                self.c_step(k, mu)
                if self.schedule.augmented_lagrangian:
                    self.update_multipliers(mu)
                row = self._finish_step(k, mu, loss, time.perf_counter() - start)
                bar.update(1)
                bar.set_postfix_str(_summary(row))
                status_line(f"LC step {k}/{total}: {_summary(row)}", enabled=self.progress)
        return self.history_frame()

    @contextlib.contextmanager
    def _saying_what_is_kept(self) -> Iterator[None]:
        """When the user's train_fn or eval_fn raises (or the run is interrupted), say which checkpoint is intact.

        lcpress's own errors say so themselves; a user's exception passes through unchanged, after one line that
        tells a notebook user the run is not lost.
        """
        try:
            yield
        except (Exception, KeyboardInterrupt) as exc:
            if self.checkpointed is not None and not isinstance(exc, LcpressError):
                log.error("LC step %d stopped (%s); the checkpoint after LC step %d is intact: continue the run with "
                          "resume=True (CLI: lcpress compress --resume)", self.checkpointed + 1, type(exc).__name__,
                          self.checkpointed)
            raise

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)

    def direct_compression(self) -> float:
        """The DC step (θ from the trained weights); returns μ0, measured first when ``mu0: auto``.

        The forms are selected at μ0 (an α trade-off depends on it), so with
        ``mu0: auto`` the C step runs at a provisional μ, μ0 is measured at the
        forms it chose, and the C step runs again at μ0 when α selects forms.
        With ``dc_mu`` set the C step runs at that μ instead (0: the cheapest
        forms, the LC toolkit's direct compression), once.
        """
        provisional = initial_mu(self.schedule, None, 0.0)
        dc_mu = self.schedule.dc_mu
        self.calibrate_metrics()
        self.c_step(0, provisional if dc_mu is None else dc_mu)
        by_alpha = any(t.config.target is None and t.config.alpha > 0 for t in self.tasks)
        if self.schedule.mu0 != "auto" or (self.schedule.steps == 0 and not by_alpha):
            return provisional  # no L step follows, and no α trades cost against μ-weighted error: μ0 moves nothing
        mu0 = initial_mu(self.schedule, self._gradient_at_delta(), *self.distance_and_scale())
        if dc_mu is None and mu0 != provisional and by_alpha:
            self.c_step(0, mu0)
        return mu0

    def _gradient_at_delta(self) -> float | None:
        """‖∇L‖ at Δ(θ) over the compressed weights (None when the run has no loss to measure it with)."""
        if self.gradient_norm is None:
            return None
        with self.compressed():
            return float(self.gradient_norm(self.model, [p for t in self.tasks for p in t.params]))

    def _check_l_step(self, k: int, mu: float, loss: float | None, before: float) -> None:
        """A non-finite training loss, or weights that blew up, end the run before anything of this step is kept.

        A diverging L step (plain SGD is unstable on the penalty once lr·μ > 2) can keep its loss finite for a
        few steps while the weights grow by orders of magnitude; Δ(θ) follows them, so ‖w − Δ‖ stays small and
        nothing else would notice. Checkpointing such a step would overwrite the last one worth resuming.
        """
        after = self._weight_norm()
        if loss is not None and not math.isfinite(loss):
            what = f"the L step's training loss is {loss}"
        elif not math.isfinite(after):
            what = "the L step left NaN or infinite values in the compressed weights"
        elif before > 0 and after > DIVERGED * before:
            what = (f"the L step diverged: the compressed weights' norm grew {after / before:.3g}× in one step "
                    f"({before:.4g} → {after:.4g})")
        else:
            return
        kept = (f"the checkpoint after LC step {k - 1} is intact (resume it after the fix); "
                if self.checkpointer is not None else "")
        raise LcpressError(
            f"LC step {k}: {what} (μ = {mu:.3g}); {kept}lower the learning rate (train.lr) or the growth of μ "
            f"(schedule.factor) — with plain SGD the penalty alone diverges once lr·μ > 2 — or check the training "
            f"function for a division by zero or a log of zero. The model object now holds the weights that step "
            f"trained: load the trained weights again before the next try"
        )

    def _weight_norm(self) -> float:
        """‖w‖ over all tasks' weights, each in its penalty's norm (what a diverging L step inflates)."""
        return math.sqrt(sum(float(self._squared_norm(i, task.weight().detach().double()))
                             for i, task in enumerate(self.tasks)))

    def l_step(self, k: int, mu: float) -> float | None:
        """Train with the penalty pulling each task's weights towards Δ(θ) + λ/μ."""
        if self.train_fn is None:
            return None
        params, targets, measured = [], [], []
        for i, task in enumerate(self.tasks):  # each task's target, once per L step
            target = self._target(i, mu)
            if self.metrics[i] is None:  # weight space: in the shapes of its parameters, one fused node for all
                params += task.params
                targets += task.view.scatter(target)
            else:  # output space: ‖(w − t)L‖² in the layer's input metric
                measured.append((task, target, self.metrics[i].to(target.dtype)))
        quadratic = QuadraticPenalty(params, targets, mu)
        calls = 0

        def penalty() -> torch.Tensor:
            nonlocal calls
            calls += 1
            total = quadratic()
            for task, target, metric in measured:
                total = total + 0.5 * mu * squared_distance(task.weight() - target, metric)
            return total

        self.model.train()
        for module in self.frozen:  # a BatchNorm the user froze (bn.eval() in a training model) stays frozen
            module.eval()
        weights = [p for task in self.tasks for p in task.params]
        versions = [p._version for p in weights]  # bumped by every in-place update (an optimizer step)
        with self._collecting():
            loss = self.train_fn(self.model, penalty, LStep(k - 1, mu, self.schedule.steps))
        trained = any(p._version != v for p, v in zip(weights, versions))
        if trained and calls == 0:  # every L step would train away from Δ(θ), and LC would never converge
            raise LcpressError("train_fn trained the compressed weights without calling penalty(), so nothing "
                               "pulled them towards their compressed form. Add it to the loss you backpropagate: "
                               "loss = task_loss + penalty()")
        if trained and calls and params and quadratic.backwards[0] == 0:  # called, but its gradient never arrived
            raise LcpressError("train_fn called penalty() but no gradient flowed back through it (was it detached, "
                               "or .item()-ed, or added to a loss that was not backpropagated?), so nothing pulled "
                               "the weights towards their compressed form. Backpropagate it with the task's loss: "
                               "(task_loss + penalty()).backward()")
        if calls and not trained and not self._said_untrained:  # once: a stale optimizer, or a learning rate of 0
            self._said_untrained = True
            log.warning("LC step %d: train_fn called penalty() but changed none of the compressed weights; does its "
                        "optimizer hold the parameters of the model it is given? (one built for another copy of the "
                        "model trains that copy)", k)
        self._update_metrics()
        return None if loss is None else returned_number(loss, "train_fn", "the training loss as one number, or None")

    # ----------------------------------------------------- output-space metrics
    def _moment_collector(self) -> MomentCollector | None:
        """Hooks for the layers whose scheme measures error on outputs; None when no scheme does."""
        watched, per_channel = {}, set()
        for i, task in enumerate(self.tasks):
            wanted = task.scheme.output_error()
            if wanted is None:
                continue
            if task.scheme.scope == "model":
                names = task.scheme.moment_layers()
            elif task.single_layer:
                names = [task.layers[0]]
            else:
                raise LcpressError(f"task {task.name!r}: scheme {task.scheme.name!r} measures error on the layer's "
                                   f"outputs, which needs one layer per task; drop 'shared: true'")
            for name in names:
                watched[(i, name)] = get_module(self.model, name)
                if wanted.per_channel:
                    per_channel.add((i, name))
        return MomentCollector(watched, per_channel=per_channel) if watched else None

    def _collecting(self) -> contextlib.AbstractContextManager:
        return self.collector.collecting() if self.collector is not None else contextlib.nullcontext()

    def calibrate_metrics(self) -> None:
        """Before the DC step: one calibration pass gives the layers' input metrics (nothing to do without one)."""
        if self.collector is None:
            return
        if self.calibrate is None:
            raise LcpressError(
                "a scheme measures error on layer outputs, so the direct compression needs the layers' inputs: "
                "pass loaders=(train, eval) or calibration=<training batches> to lcpress.compress (or calibrate= to "
                "LCEngine), or use the weight-space error"
            )
        with in_mode(self.model, training=False), torch.no_grad(), self.collector.collecting():
            self.calibrate(self.model)
        self._update_metrics()

    def _update_metrics(self) -> None:
        """The metrics of the next C step and L step, from the inputs the layers saw since the last update."""
        if self.collector is None:
            return
        by_task: dict[int, dict[str, torch.Tensor]] = {}
        for (i, name), moment in self.collector.take().items():
            if not all_finite(moment):
                raise LcpressError(f"layer {name!r}: its inputs hold NaN or infinite values (or their second moment "
                                   f"overflows), so its output-space error cannot be measured; check the data and the "
                                   f"layers before it, or use the weight-space error for this layer")
            by_task.setdefault(i, {})[name] = moment
        for i, moments in by_task.items():
            scheme = self.tasks[i].scheme
            with self._calling(self.tasks[i], self.next_step, "output_metric"):
                metric = scheme.output_metric(moments, scheme.output_error().damping)
            self.metrics[i] = metric.to(self.tasks[i].params[0].device, torch.float64)

    def _target(self, i: int, mu: float) -> torch.Tensor:
        task = self.tasks[i]
        target = self._delta(i, self.next_step).detach().to(task.params[0].device)
        lam = self.multipliers[i]
        return target if lam is None else target + lam / mu

    def c_step(self, k: int, mu: float) -> None:
        """Compress every task; selecting schemes go through α or the group's budget."""
        inputs = self.c_step_inputs(k, mu)
        contexts = self.candidates(k, mu, inputs)
        self._select(k, mu, inputs, contexts)
        with progress_bar(total=len(self.tasks), desc=f"C step {k}", unit="layer", enabled=self.progress) as bar:
            for i, task in enumerate(self.tasks):
                with self._calling(task, k, "compress"):  # a dense choice never reaches the scheme's code
                    state = task.scheme.compress(inputs[i], contexts[i])
                self._check_state(task, k, state, inputs[i])
                self.states[i] = state
                bar.update(1)

    def _check_state(self, task: Task, k: int, state: Any, w: torch.Tensor) -> torch.Tensor:
        """Δ(θ) of a fresh state must be a finite tensor of w's shape and dtype, before anything uses or saves it.

        Returns that Δ(θ), for a caller that needs it at once.
        """
        delta = None
        if not isinstance(state, State):
            problem = f"compress() returned a {type(state).__name__}, not an lcpress.State"
        else:
            with self._calling(task, k, "decompress"):
                delta = task.scheme.decompress(state)
            problem = _delta_problem(delta, w)
        if problem:
            _refuse(task, k, problem)
        return delta

    def c_step_inputs(self, k: int, mu: float) -> list[torch.Tensor]:
        """What each task's C step compresses: ``w − λ/μ`` (``w`` for the plain penalty), checked finite."""
        inputs = []
        for i, task in enumerate(self.tasks):
            w = task.weight().detach()
            if not all_finite(w):
                raise LcpressError(
                    f"LC step {k}: the weights of {task.name!r} hold NaN or infinite values; "
                    f"lower the L step's learning rate or μ growth (schedule.factor)"
                )
            lam = self.multipliers[i]
            inputs.append(w if lam is None else w - lam / mu)
        return inputs

    def candidates(self, k: int, mu: float, inputs: list[torch.Tensor] | None = None) -> list[CStepContext]:
        """Every task's C-step context, holding the candidates its scheme offers (None where it has no choice).

        The first half of a C step, before the core selects; ``lcpress profile``
        uses it to learn which forms a run could ask a cost model about.
        """
        inputs = self.c_step_inputs(k, mu) if inputs is None else inputs
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        contexts = [
            CStepContext(mu=mu, cost_model=t.cost_model, spec=t.spec, previous=self.states[i],
                         generator=generator, step=k, layer=t.name, input_metric=self.metrics[i])
            for i, t in enumerate(self.tasks)
        ]
        for members in self._batches():
            scheme = self.tasks[members[0]].scheme
            items = [(inputs[i], contexts[i]) for i in members]
            with self._calling(self.tasks[members[0]], k, "candidates"):
                found = scheme.candidates_many(items)
            for i, candidates in zip(members, found):
                problem = _candidates_problem(candidates, inputs[i])
                if problem:
                    _refuse(self.tasks[i], k, problem)
                contexts[i].candidates = candidates
        return contexts

    def _batches(self) -> list[list[int]]:
        """Task indices grouped by identical scheme class and options (one batched call each)."""
        batches: dict[tuple, list[int]] = {}
        for i, task in enumerate(self.tasks):
            key = (type(task.scheme), repr(task.scheme.options))
            batches.setdefault(key, []).append(i)
        return list(batches.values())

    def _calling(self, task: Task, k: int, what: str) -> contextlib.AbstractContextManager:
        """Guard a call of a scheme method: a failure becomes a :class:`CStepError` naming plugin, layer and step.

        The engine checkpoints only after a whole step succeeds, so the last
        checkpoint never holds a half-done C step: the user fixes the plugin
        and resumes from it.
        """
        if self.checkpointer is not None and self.next_step > 0:
            hint = (f" The checkpoint after LC step {self.next_step - 1} is intact: fix the plugin and resume "
                    f"(lcpress compress --resume, or resume=True).")
        else:
            hint = " Fix the plugin, or choose another scheme for this layer."
        return plugin_call(task.scheme, f"in {what}() on layer {task.name!r} at LC step {k}", error=CStepError,
                           hint=hint)

    def _delta(self, i: int, k: int) -> torch.Tensor:
        """Δ(θ) of task ``i``, with a failing ``decompress`` reported like a failing C step."""
        task = self.tasks[i]
        with self._calling(task, k, "decompress"):
            return task.scheme.decompress(self.states[i])

    def _select(self, k: int, mu: float, inputs: list[torch.Tensor], contexts: list[CStepContext]) -> None:
        groups: dict[int, list[int]] = {}
        for i, ctx in enumerate(contexts):
            if ctx.candidates is not None:
                groups.setdefault(self.tasks[i].group, []).append(i)
        for g, members in groups.items():
            cfg = self.tasks[members[0]].config
            if isinstance(contexts[members[0]].candidates, Coupled):
                for i in members:  # a model-scope scheme plans one task per task group
                    self.selection[g] = self._select_coupled(self.tasks[i], contexts[i], mu)
                continue
            scheme = self.tasks[members[0]].scheme
            minmax = cfg.target is not None and scheme.allocation == "minmax"
            measured = cfg.target is not None and mu > 0 and scheme.sensitivity == "measured"
            errors = []
            for i in members:
                e = contexts[i].candidates.errors.to("cpu", torch.float64)  # costs are CPU tensors; SVDs stay on the device
                zero = max(float(self._squared_norm(i, inputs[i].double())), 1e-300)  # the error of Δ = 0
                e = budget_mod.without_rounding(e, zero)
                if cfg.normalize or minmax or measured:  # relative to the error of Δ = 0, in the task's own metric
                    e = e / zero
                errors.append(e)
            if measured:
                errors = self._measured_drops(k, members, inputs, contexts, errors)
            if cfg.target is not None and mu > 0:
                choice = self._choose_for_target(k, members, contexts, errors, cfg, minmax, warn=g not in self._told)
                self._told.add(g)
            else:  # by α; at μ = 0 (schedule.dc_mu: 0, the LC toolkit's direct compression) by cost alone
                priced_by = [self.cost_models[cfg.target.cost] if cfg.target is not None else self.tasks[i].cost_model
                             for i in members]
                costs = [self._price(self.tasks[i], model, contexts[i].candidates.forms, k)
                         for i, model in zip(members, priced_by)]
                if cfg.alpha > 0 and self.refuse_all_dense:
                    _refuse_nothing_cheaper(g, [contexts[i].candidates.forms for i in members], costs,
                                            priced_by[0].name, scheme.name)
                choice = budget_mod.choose_with_alpha(costs, errors, cfg.alpha, mu)
                chosen = [contexts[i].candidates.forms[j] for i, j in zip(members, choice.indices)]
                if cfg.alpha == 0 and mu > 0 and self.refuse_all_dense:
                    _refuse_all_dense(g, chosen)
                if cfg.alpha > 0 and mu > 0 and g not in self._told and all(isinstance(f, Dense) for f in chosen):
                    self._told.add(g)  # once: a larger μ only makes errors weigh more
                    log.warning("tasks[%d]: alpha = %g keeps every layer dense at μ = %.3g: no form saves enough "
                                "cost to outweigh its error, so nothing is compressed; raise alpha, or state a "
                                "target instead", g, cfg.alpha, mu)
            self.selection[g] = choice
            for i, idx in zip(members, choice.indices):
                contexts[i].choice = idx

    # ------------------------------------------------------ measured sensitivity
    def _check_sensitivity(self) -> None:
        """``sensitivity: measured`` shares a target's budget by the run's metric: it needs both."""
        for task in self.tasks:
            if task.scheme.sensitivity != "measured":
                continue
            if task.config.target is None:
                raise LcpressError(f"task {task.name!r}: sensitivity: measured shares a target's budget by measured "
                                   f"metric drops; give the task a target, or use sensitivity: error")
            if self.eval_fn is None:
                raise LcpressError(f"task {task.name!r}: sensitivity: measured scores candidates with the run's "
                                   f"metric; pass eval_fn (or loaders=(train, eval)) to lcpress.compress, or use "
                                   f"sensitivity: error")

    def _measured_drops(self, k: int, members: list[int], inputs: list[torch.Tensor], contexts: list[CStepContext],
                        errors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each candidate's metric drop, read off its layer's curve in relative error (measured once, here)."""
        missing = [i for i in members if i not in self.curves]
        if missing:
            self._measure_curves(k, missing, inputs, contexts, dict(zip(members, errors)))
        return [self.curves[i](e) for i, e in zip(members, errors)]

    def _measure_curves(self, k: int, members: list[int], inputs: list[torch.Tensor], contexts: list[CStepContext],
                        errors: dict[int, torch.Tensor]) -> None:
        """The metric with each layer alone compressed, at a few of its candidates (:mod:`lcpress.core.sensitivity`)."""
        cfg = self.tasks[members[0]].config
        model = self.cost_models[cfg.target.cost]
        chosen = {i: sensitivity_mod.probes(self._price(self.tasks[i], model, contexts[i].candidates.forms, k),
                                            errors[i], self.tasks[i].scheme.sensitivity_points) for i in members}
        with self._restoring():
            baseline = self._evaluate()
        with progress_bar(total=sum(map(len, chosen.values())), desc="measuring sensitivity", unit="eval",
                          enabled=self.progress) as bar:
            for i, candidates in chosen.items():
                def metric_at(j: int, i: int = i) -> float:
                    bar.update(1)
                    return self._metric_with(i, k, inputs[i], contexts[i], j)

                self.curves[i], raw = sensitivity_mod.measure(candidates, errors[i], baseline, metric_at)
                log.info("sensitivity of %s (metric %.4f dense): %s", self.tasks[i].name, baseline,
                         ", ".join(f"error {x:.3g} → drop {y:+.4f}" for x, y in raw))

    def _metric_with(self, i: int, k: int, w: torch.Tensor, ctx: CStepContext, j: int) -> float:
        """The run's metric with task ``i`` alone at candidate ``j`` of its C step; the model is restored after."""
        task = self.tasks[i]
        ctx.choice = j
        with self._calling(task, k, "compress"):
            state = task.scheme.compress(w, ctx)
        delta = self._check_state(task, k, state, w)
        with self._restoring(), torch.no_grad():
            for p, value in zip(task.params, task.view.scatter(delta.to(w.device))):
                p.copy_(value)
            return self._evaluate()

    def _select_coupled(self, task: Task, ctx: CStepContext, mu: float) -> budget_mod.Choice:
        """One choice per part of a :class:`Coupled` task, priced layer by layer (:mod:`lcpress.core.coupled`)."""
        coupled, cfg = ctx.candidates, task.config
        errors = [part.errors.to("cpu", torch.float64) for part in coupled.parts]
        minmax = cfg.target is not None and task.scheme.allocation == "minmax"
        if (cfg.normalize or minmax) and coupled.scales is not None:
            errors = [e / max(scale, 1e-300) for e, scale in zip(errors, coupled.scales)]
        model = self.cost_models[cfg.target.cost] if cfg.target is not None else task.cost_model
        with plugin_call(model, f"pricing the layers of {task.name!r} at LC step {ctx.step}"):
            pricing = coupled_mod.CoupledPricing(task.layer_specs, coupled, model)
            dense = sum(model.dense_cost(spec) for spec in task.layer_specs.values())
            if cfg.target is None:
                choice = coupled_mod.select(pricing, errors, 2.0 * cfg.alpha / mu, None)
            else:
                budget = cfg.target.value if cfg.target.value is not None else cfg.target.ratio * dense
                choice = (coupled_mod.select_minmax(pricing, errors, budget) if minmax
                          else coupled_mod.select(pricing, errors, None, budget))
        choice.dense_cost = dense
        if not choice.feasible and task.group not in self._told:  # once, in ratios, as for any other target
            log.warning("%s", _unreachable(task, model, choice))
            self._told.add(task.group)
        ctx.choice = choice.indices
        return choice

    def _choose_for_target(self, k: int, members, contexts, errors, cfg, minmax: bool, warn: bool) -> budget_mod.Choice:
        model = self.cost_models[cfg.target.cost]
        costs = self._priced(model, members, contexts, k)
        dense = sum(float(self._price(self.tasks[i], model, [Dense()], k)[0]) for i in members)
        budget = cfg.target.value if cfg.target.value is not None else cfg.target.ratio * dense
        choose = budget_mod.choose_minmax if minmax else budget_mod.choose_for_budget
        choice = choose(costs, errors, budget)
        choice.dense_cost = dense
        if warn and self.refuse_all_dense:
            _refuse_unsteerable(self.tasks[members[0]].group, model, dense, budget)
        if not choice.feasible and warn:  # once: the candidate sets do not change between steps
            log.warning("%s", _unreachable(self.tasks[members[0]], model, choice))
        return choice

    def _priced(self, model: CostModel, members: list[int], contexts: list[CStepContext], k: int) -> list[torch.Tensor]:
        """Every candidate of the members' layers priced by ``model``: a measured model's first prices take minutes
        on a large model (thousands of forms timed), so they get a bar and a line saying what was measured."""
        before, start = getattr(model, "measurements", 0), time.perf_counter()
        estimated_before = len(getattr(model, "estimated", ()))
        costs = []
        with progress_bar(total=len(members), desc=f"pricing by {model.name}", unit="layer",
                          enabled=self.progress and hasattr(model, "measurements")) as bar:
            for i in members:
                costs.append(self._price(self.tasks[i], model, contexts[i].candidates.forms, k))
                bar.update(1)
        measured = getattr(model, "measurements", 0) - before
        estimated = len(getattr(model, "estimated", ())) - estimated_before
        if measured:
            skipped = (f" ({estimated} more do more FLOPs and store more than dense: priced from dense, not timed)"
                       if estimated else "")
            status_line(f"{model.name}: measured {measured} forms of {len(members)} layers in "
                        f"{time.perf_counter() - start:.0f} s{skipped}; kept for later runs on this device",
                        enabled=self.progress)
        return costs

    def _price(self, task: Task, model: CostModel, forms: list[Form], k: int) -> torch.Tensor:
        """``forms`` of the task's layer priced by ``model``, a failing price named with the layer and LC step ``k``."""
        if task.spec is None:
            raise LcpressError(
                f"task {task.name!r} spans several layers, so cost model {model.name!r} cannot price it; "
                f"use 'shared: false' or a scheme that does not select by cost"
            )
        with plugin_call(model, f"pricing layer {task.name!r} at LC step {k}"):
            return model.costs(task.spec, forms)

    def update_multipliers(self, mu: float) -> None:
        """λ ← λ − μ (w − Δ(θ))."""
        for i, task in enumerate(self.tasks):
            w = task.weight().detach()
            delta = self._delta(i, self.next_step).to(w.device)
            lam = self.multipliers[i]
            step = mu * (w - delta)
            self.multipliers[i] = -step if lam is None else lam - step

    # --------------------------------------------------------------- records
    def _finish_step(self, k: int, mu: float, loss: float | None, seconds: float) -> dict[str, Any]:
        distance, scale = self.distance_and_scale()
        row: dict[str, Any] = {"step": k, "mu": mu, "train_loss": loss, "distance": distance, "scale": scale}
        if self.eval_fn is not None:
            with self.compressed():
                row["metric"] = self._evaluate()
        for name, model in self.cost_models.items():
            if self.graph is not None and not model.unavailable_reason():
                row[f"cost_{name}"] = self._total(model, k)
        for g, choice in sorted(self.selection.items()):
            if choice.budget is not None:  # a global target: what was asked, what the forms cost
                row[f"target{g}_requested"] = choice.budget
                row[f"target{g}_achieved"] = choice.total_cost
                row[f"target{g}_dense"] = choice.dense_cost
        row["seconds"] = seconds
        self.history.append(row)
        self.next_step = k + 1
        if self.checkpointer is not None:  # first: history.csv never runs ahead of what a resume continues from
            tensors, meta = self.snapshot()
            self.checkpointer.save(tensors, meta)
            self.checkpointed = k
        if self.history_csv is not None:
            with replacing(self.history_csv) as tmp:  # a kill mid-write keeps the last whole history
                self.history_frame().to_csv(tmp, index=False)
        return row

    def distance_and_scale(self) -> tuple[float, float]:
        """‖w − Δ(θ)‖ and ‖Δ(θ)‖ over all tasks, each in its penalty's norm, from one Δ(θ) per task (a
        decompression is a matrix product of the layer's size, or a codebook lookup: every LC step needs both).

        A task whose scheme measures error on layer outputs is penalised in its
        input metric, where directions the inputs never take cost nothing; its
        weight-space distance need not fall as LC converges, so it is measured
        in that metric (``tr(D Σ Dᵀ)``), as the penalty and the C step see it.
        ``tolerance`` is relative to the second number.
        """
        distance = scale = 0.0
        for i, task in enumerate(self.tasks):
            w = task.weight().detach()
            delta = self._delta(i, self.next_step).to(w.device)
            distance += float(self._squared_norm(i, w - delta))
            scale += float(self._squared_norm(i, delta.double()))
        return math.sqrt(distance), math.sqrt(scale)

    def distance(self) -> float:
        """‖w − Δ(θ)‖ (see :meth:`distance_and_scale`)."""
        return self.distance_and_scale()[0]

    def scale(self) -> float:
        """‖Δ(θ)‖ (see :meth:`distance_and_scale`): what ``tolerance`` is relative to."""
        return self.distance_and_scale()[1]

    def _squared_norm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``‖x‖²`` in task ``i``'s penalty norm: its input metric (in float64) for output-space error, else Frobenius."""
        metric = self.metrics[i]
        if metric is None:
            return squared_distance(x, None)
        return squared_distance(x.double(), metric.to(device=x.device, dtype=torch.float64))

    def forms(self) -> dict[str, Form]:
        """Current form of every compressed layer, by layer name (multi-layer tasks through ``layer_forms``)."""
        forms: dict[str, Form] = {}
        for task, state in zip(self.tasks, self.states):
            if state is None:
                continue
            if task.single_layer:
                forms[task.name] = task.scheme.form(state)
            else:
                forms.update(zip(task.layers, task.scheme.layer_forms(state, task.view.shapes)))
        return forms

    def _total(self, model: CostModel, k: int) -> float:
        """The model's cost under ``model`` after LC step ``k``: the sum of its layers' prices (what
        :meth:`CostModel.total` is, as the kit checks), each priced under a guard that names the layer and step."""
        total = 0.0
        for name, (spec, form) in zip(self.graph.specs, self.priced_layers()):
            with plugin_call(model, f"pricing layer {name!r} in form {form.describe()!r} at LC step {k}"):
                total += float(model.costs(spec, [form])[0])
        return total

    def priced_layers(self) -> list[tuple[LayerSpec, Form]]:
        """(spec, form) of every traced layer: compressed ones in their form, others dense."""
        assert self.graph is not None
        forms = self.forms()
        return [(spec, forms.get(name, Dense())) for name, spec in self.graph.specs.items()]

    def _evaluate(self) -> float:
        """The run's metric of the model as it stands, after re-estimating BatchNorm statistics where the run does."""
        if self.before_eval is not None:
            self.before_eval(self.model)
        return evaluated(self.model, self.eval_fn)

    @contextlib.contextmanager
    def compressed(self) -> Iterator[nn.Module]:
        """Temporarily load Δ(θ) into the model (for evaluation), then restore w and every buffer."""
        with self._restoring():
            load_compressed(self.tasks, self.states)
            yield self.model

    @contextlib.contextmanager
    def _restoring(self) -> Iterator[None]:
        """Restore every task's w and every buffer on exit, whatever was written into them meanwhile.

        Buffers (BatchNorm running statistics) are restored too, so what an
        evaluation re-estimates for Δ(θ) never leaks into the L steps.
        """
        saved = [[p.detach().clone() for p in t.params] for t in self.tasks]
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for task, values in zip(self.tasks, saved):
                    for p, value in zip(task.params, values):
                        p.copy_(value)
                for buffer, value in buffers:
                    buffer.copy_(value)

    # ------------------------------------------------------------ checkpoint
    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to continue the run exactly (see :meth:`restore`)."""
        tensors: dict[str, torch.Tensor] = {}
        meta = {
            "next_step": self.next_step,
            "history": self.history,
            "model": split_tensors(self.model.state_dict(), tensors, "model"),
            "states": [None if s is None else split_tensors({"tensors": s.tensors, "meta": s.meta}, tensors,
                                                            f"theta/{i}") for i, s in enumerate(self.states)],
            "multipliers": [None if m is None else split_tensors(m, tensors, f"lambda/{i}")
                            for i, m in enumerate(self.multipliers)],
            "metrics": [None if m is None else split_tensors(m, tensors, f"metric/{i}")
                        for i, m in enumerate(self.metrics)],
            "task_names": [t.name for t in self.tasks],
            "sensitivity": {str(i): curve.to_dict() for i, curve in self.curves.items()},
            "rng": split_tensors(_rng_state(), tensors, "rng"),
            "threads": torch.get_num_threads(),  # sums run in another order on another count: see restore
        }
        if hasattr(self.train_fn, "state_dict"):
            meta["trainer"] = split_tensors(self.train_fn.state_dict(), tensors, "trainer")
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot`."""
        state = check_restorable(self.model, self.tasks, tensors, meta)
        threads = meta.get("threads")
        if isinstance(threads, int) and threads != torch.get_num_threads():
            log.warning("the run was checkpointed with %d torch threads and resumes with %d: it continues correctly, "
                        "but a convolution's sums run in another order, so it will not be bit-identical to a run "
                        "never stopped (torch.set_num_threads(%d) makes it so)", threads, torch.get_num_threads(),
                        threads)
        self.model.load_state_dict(state)
        device = next(self.model.parameters()).device
        self.states = [None if s is None else _state(join_tensors(s, tensors)).to(device) for s in meta["states"]]
        self.multipliers = [None if m is None else join_tensors(m, tensors).to(device) for m in meta["multipliers"]]
        self.metrics = [None if m is None else join_tensors(m, tensors).to(device)
                        for m in meta.get("metrics", [None] * len(self.tasks))]
        self.history = list(meta["history"])
        self.curves = {int(i): sensitivity_mod.Curve.from_dict(doc) for i, doc in meta.get("sensitivity", {}).items()}
        self.next_step = int(meta["next_step"])
        self.checkpointed = self.next_step - 1
        if "trainer" in meta and hasattr(self.train_fn, "load_state_dict"):
            self.train_fn.load_state_dict(join_tensors(meta["trainer"], tensors))
        _set_rng_state(join_tensors(meta["rng"], tensors))

    def _set_rng(self, k: int) -> None:
        torch.manual_seed(self.seed + k)
        random.seed(self.seed + k)


def check_restorable(model: nn.Module, tasks: Sequence[Task], tensors: dict[str, torch.Tensor],
                     meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model state a :meth:`LCEngine.snapshot` holds, when it can continue this model and these tasks; else
    the refusal, raised before anything is changed (a run resumed or extended checks this before it writes)."""
    names = [t.name for t in tasks]
    if meta["task_names"] != names:
        raise LcpressError(
            f"the checkpoint compresses layers {meta['task_names']} but this config plans {names}; "
            f"resume with the config the run started with, or start afresh with --force"
        )
    state = join_tensors(meta["model"], tensors)
    _refuse_other_model(state, model.state_dict())
    return state


def _refuse_other_model(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> None:
    """A checkpoint resumes only into the model it was written from: the first difference, named."""
    def shape(tensor: torch.Tensor | None) -> str:
        return "absent" if tensor is None else str(tuple(tensor.shape))

    for key in sorted(set(saved) | set(current)):
        there, here = saved.get(key), current.get(key)
        if shape(there) != shape(here):
            raise LcpressError(
                f"the checkpoint holds a model of another architecture ({key!r} is {shape(there)} there, "
                f"{shape(here)} here); resume with the model the run started with, or start afresh with "
                f"force=True (CLI: --force)")


def _state(doc: dict[str, Any]) -> State:
    return State(doc["tensors"], doc["meta"])


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_rng()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unreachable(task: Task, model: CostModel, choice: budget_mod.Choice) -> str:
    """The one warning for a target the cheapest forms cannot reach, in ratios of the dense cost."""
    dense = choice.dense_cost or 0.0
    at = batch_text(model, task.spec.input_shape[0] if task.spec else None)
    by_value = task.config.target is not None and task.config.target.value is not None
    share = f"{choice.budget / dense:.1%} of dense" if dense else ""
    asked = (f"{choice.budget:.4g} {model.unit}" + (f" ({share})" if share else "")) if by_value or not dense else share
    reach = f"{choice.total_cost / dense:.1%}" if dense else f"{choice.total_cost:.4g} {model.unit}"
    multiple = getattr(task.scheme.options, "rank_multiple", None)
    smaller = ("" if multiple == 1 else ", or allow smaller forms in the scheme's options"
               + (f" (rank_multiple: {multiple} now)" if multiple else " (low_rank: a smaller rank_multiple)"))
    return (f"tasks[{task.group}].target: {model.name} ≤ {asked} is out of reach: the cheapest forms of the group's "
            f"layers reach {reach} of their dense {model.name}{at}, so those are used. Raise the target "
            f"{'value' if by_value else 'ratio'}, compress more layers, or price the task in what its scheme saves "
            f"(quantized and sparse layers store less but run as dense ones: cost: storage){smaller}")


def _refuse_all_dense(group: int, chosen: list[Form]) -> None:
    """A selecting task with neither α nor a target keeps every layer dense (no error beats dense): say so.

    Otherwise the run trains every L step, reports "0 realized" and hands back the model it was given.
    """
    if chosen and all(isinstance(form, Dense) for form in chosen):
        raise ConfigError(
            f"tasks[{group}]: the scheme chooses each layer's form, but with neither a target nor alpha > 0 the "
            f"C step keeps every layer dense (dense has no error), so nothing would be compressed. Set "
            f"tasks[{group}].target (e.g. {{ratio: 0.5}}), tasks[{group}].alpha, or a fixed form in "
            f"tasks[{group}].options (rank, keep, k)"
        )


def _refuse_unsteerable(group: int, model: CostModel, dense: float, budget: float) -> None:
    """A target that cannot steer the choice: the layers cost nothing in its unit, or it asks for no saving."""
    if dense == 0:
        raise ConfigError(
            f"tasks[{group}].target: the group's layers cost 0 {model.unit} under {model.name!r} (a table lookup "
            f"multiplies nothing), so a target in it cannot choose their forms; state it in what they store "
            f"(target: {{cost: params}} or {{cost: storage}})")
    if budget >= dense:
        log.warning("tasks[%d].target: %s ≤ %.4g %s is at or above the group's dense %.4g %s, so it asks for no "
                    "saving and the layers may all stay dense; lower the target", group, model.name, budget,
                    model.unit, dense, model.unit)


def _refuse_nothing_cheaper(group: int, forms: list[list[Form]], costs: list[torch.Tensor], cost: str,
                            scheme: str) -> None:
    """α trades cost for error: when no candidate of any layer costs less than dense, α can never pick one.

    Quantized and sparse layers run as dense products, so under ``flops`` (or a measured latency) they cost what
    dense does; without this the run trains every L step and hands back the model dense.
    """
    for layer_forms, layer_costs in zip(forms, costs):
        dense = [c for f, c in zip(layer_forms, layer_costs.tolist()) if isinstance(f, Dense)]
        if not dense or any(c < dense[0] for f, c in zip(layer_forms, layer_costs.tolist()) if not isinstance(f, Dense)):
            return
    raise ConfigError(
        f"tasks[{group}]: under cost {cost!r} no form {scheme} offers costs less than dense, so alpha can never "
        f"choose one and every layer would stay dense. Price the task in what the scheme saves: tasks[{group}].cost: "
        f"storage (quantize and prune store less but run as dense products; cost: params also counts a pruned "
        f"layer's kept weights)")


def _refuse(task: Task, k: int, problem: str) -> NoReturn:
    """A scheme's C step returned something unusable: stop before anything of the step is used or saved."""
    raise CStepError(f"{plugin_label(task.scheme)} on layer {task.name!r} at LC step {k}: {problem}. Nothing of this "
                     f"step was kept; fix the plugin (or choose another scheme for this layer)")


def _candidates_problem(candidates: Any, w: torch.Tensor) -> str | None:
    """What is wrong with a scheme's candidates for weight ``w``, or None.

    The selection trusts the errors: a NaN one never wins nor loses a comparison (a target silently missed), a
    negative one makes its form look better than exact. Rounding may leave an exact error a hair below zero.
    """
    if candidates is None:
        return None
    if isinstance(candidates, Coupled):
        return next(filter(None, (_candidates_problem(part, w) for part in candidates.parts)), None)
    if not isinstance(candidates, Candidates):
        return f"candidates() returned a {type(candidates).__name__}, not lcpress.Candidates (or None)"
    if not all(isinstance(form, Form) for form in candidates.forms):
        return "every candidate form must be an lcpress.Form"
    errors = candidates.errors
    if not isinstance(errors, torch.Tensor) or tuple(errors.shape) != (len(candidates.forms),):
        return (f"Candidates.errors must be a tensor of one error per form ({len(candidates.forms)}), got "
                f"{type(errors).__name__} {tuple(getattr(errors, 'shape', ()))}")
    errors = errors.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(errors).all()):
        return "candidate errors hold NaN or infinite values"
    weight = w.detach() if w.dtype in (torch.float32, torch.float64) else w.detach().float()  # no 16-bit overflow
    tol = 1e-6 * max(float(errors.abs().max()), float(torch.linalg.vector_norm(weight)) ** 2)  # no float64 copy
    if bool((errors < -tol).any()):
        return f"candidate errors must be non-negative (‖w − Δ‖² of each form), got {float(errors.min()):.3g}"
    return None


def _delta_problem(delta: Any, w: torch.Tensor) -> str | None:
    """What is wrong with a Δ(θ) for weight ``w``, or None."""
    if not isinstance(delta, torch.Tensor):
        return f"decompress() returned a {type(delta).__name__}, not a tensor"
    if tuple(delta.shape) != tuple(w.shape):
        return f"Δ(θ) has shape {tuple(delta.shape)} but the weight it stands for has {tuple(w.shape)}"
    if delta.dtype != w.dtype:
        return f"Δ(θ) is {delta.dtype} but the weight is {w.dtype}"
    if not all_finite(delta):
        return "Δ(θ) holds NaN or infinite values"
    return None


def _summary(row: dict[str, Any]) -> str:
    """One line per LC step: μ, distance to the compressed weights, loss, metric, seconds."""
    parts = [f"μ={row['mu']:.3g}", f"‖w−Δ‖={row['distance']:.3g}"]
    if row.get("train_loss") is not None:
        parts.append(f"loss={row['train_loss']:.3g}")
    if row.get("metric") is not None:
        parts.append(f"metric={row['metric']:.4g}")
    parts.append(f"{row.get('seconds', 0.0):.1f}s")
    return " ".join(parts)

"""Parameter count — the simplest cost model, and a template for cost-model plugins.

A layer's cost is the number of values its form stores (weights and bias of
every primitive layer; sparse and quantized forms report their own storage).
"""

from __future__ import annotations

import lcpress
from lcpress import CostModel, Form, LayerSpec


class ParamsCost(CostModel):
    """Number of stored parameters of the layer in the given form."""

    name = "params"
    unit = "params"

    def cost(self, spec: LayerSpec, form: Form) -> float:
        return float(form.param_count(spec))


@lcpress.hookimpl
def lcpress_register_cost_models(register) -> None:
    register(ParamsCost)

"""Floating-point operations of one forward pass, as torch's FlopCounterMode counts them.

Two FLOPs per multiply–accumulate of every primitive layer the form executes,
at the input shape traced from the example input (batch included), times the
number of calls. Bias additions are not counted, as in
``torch.utils.flop_counter``; the test suite checks agreement exactly.
"""

from __future__ import annotations

import lcpress
from lcpress import CostModel, Form, LayerSpec


class FlopsCost(CostModel):
    """Forward FLOPs of the layer in the given form."""

    name = "flops"
    unit = "FLOPs"

    def cost(self, spec: LayerSpec, form: Form) -> float:
        return float(sum(p.flops for p in form.primitives(spec)))


@lcpress.hookimpl
def lcpress_register_cost_models(register) -> None:
    register(FlopsCost)

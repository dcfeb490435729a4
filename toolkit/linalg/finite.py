"""Whether a tensor holds only finite values, at the cost of one sum.

``torch.isfinite(t).all()`` builds a boolean tensor as large as ``t`` and reads it
again: on a BERT-base C step, whose weights are checked before and after
compression, that was 15–18% of the step. A sum is one pass with no copy, and
NaN or ±inf in any entry makes it non-finite, so a finite sum proves every
entry finite. Only a non-finite sum needs the entry-wise check, because finite
entries can still overflow it (float16 weights of a few thousand, say).
"""

from __future__ import annotations

import torch


def all_finite(tensor: torch.Tensor) -> bool:
    """True when every entry of ``tensor`` is finite (no NaN, no ±inf); integer tensors always are."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())  # an overflowing sum of finite entries, or a real NaN / inf

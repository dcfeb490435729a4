"""Start from the LC toolkit's own reference LeNet300 instead of one trained here.

Their published table compresses one particular trained net: the
``lenet300_classic.pklz`` of their ``examples/lenet300`` folder (2.13% test
error). lcpress's rows start from ``train_reference.py``'s net instead (2.02%),
so the two tables differ in their starting point as well as in their
algorithms. This script converts their file, so that a row can be run from the
very weights their table was computed from::

    git clone https://github.com/UCMerced-ML/LC-model-compression /tmp/lc-toolkit
    python lc_reference.py /tmp/lc-toolkit/examples/lenet300/lenet300_classic.pklz
    python run_all.py --reference lc-toolkit

The file is a gzip'd pickle of a CUDA state dict. Unpickling runs whatever a
pickle names, so only the four names such a state dict needs are allowed, and
CUDA storages are read onto the CPU; anything else is refused. The converted
weights are checked on MNIST's 10,000 test images before they are saved
(``runs/lenet300_lc_reference.safetensors``, git-ignored).
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import warnings
from pathlib import Path

import torch

import lenet300

#: (module, name) a pickled state dict of float tensors refers to, and what each is read as
_ALLOWED = {
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"): ("torch._utils", "_rebuild_tensor_v2"),
    ("torch", "FloatStorage"): ("torch", "FloatStorage"),
    ("torch.cuda", "FloatStorage"): ("torch", "FloatStorage"),  # their file was saved from a GPU
}


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a LeNet300 state dict holds only "
                                         f"float tensors")
        return super().find_class(*_ALLOWED[module, name])


def read(path: Path) -> dict[str, torch.Tensor]:
    """Their state dict, as CPU float32 tensors under this folder's layer names."""
    try:
        with gzip.open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated: the pickle was written with it
            state = _StateDictUnpickler(f).load()
    except Exception as err:  # a malformed pickle fails in any of a dozen ways; each means the same to the user
        raise SystemExit(f"{path}: not the LC toolkit's lenet300_classic.pklz ({err})") from None
    names = lenet300.LC_TOOLKIT_NAMES
    if set(state) != set(names):
        raise SystemExit(f"{path}: expected the layers {sorted(names)}, found {sorted(state)}")
    return {names[k]: v.detach().float().cpu().contiguous() for k, v in state.items()}


def test_error(weights: dict[str, torch.Tensor]) -> float:
    """Top-1 error of LeNet300 with ``weights`` on MNIST's test images, as a fraction."""
    from lcpress import accuracy

    model = lenet300.lenet300()
    model.load_state_dict(weights)
    return 1 - accuracy(model, lenet300.loaders()[1])


def convert(source: Path, output: Path = lenet300.LC_REFERENCE) -> float:
    """Convert ``source`` to safetensors at ``output``; returns its test error."""
    from safetensors.torch import save_file

    weights = read(source)
    error = test_error(weights)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(output))
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pklz", type=Path, help="their examples/lenet300/lenet300_classic.pklz")
    parser.add_argument("--output", type=Path, default=lenet300.LC_REFERENCE)
    args = parser.parse_args()
    error = convert(args.pklz, args.output)
    print(f"saved {args.output}: test error {100 * error:.2f}% (their table: 2.13%)")


if __name__ == "__main__":
    main()

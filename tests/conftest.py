import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# A relative PRUNECOMP_DATA (the README's `../shared/data`) must mean the same folder from any
# working directory the code later runs in (lm-eval symlinks, subprocesses).
if os.environ.get("PRUNECOMP_DATA"):
    os.environ["PRUNECOMP_DATA"] = str(Path(os.environ["PRUNECOMP_DATA"]).expanduser().resolve())


@pytest.fixture
def data_dir():
    """The shared real-data folder; tests needing it skip when PRUNECOMP_DATA is unset."""
    value = os.environ.get("PRUNECOMP_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("needs real data: set PRUNECOMP_DATA to the shared data folder (e.g. ../shared/data)")
    return Path(value)


@pytest.fixture
def tiny_model_dir(tmp_path_factory):
    """A 6-layer tiny Llama with its tokenizer, saved to disk (a fresh folder per test)."""
    from tiny import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("model") / "model"
    tiny_model("llama", layers=6, eps=1e-6).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def sample_text_file(tmp_path_factory):
    from tiny import SAMPLE_TEXT

    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(SAMPLE_TEXT)
    return path

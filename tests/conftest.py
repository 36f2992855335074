import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def data_dir():
    """The shared real-data folder; tests needing it skip when PRUNECOMP_DATA is unset."""
    value = os.environ.get("PRUNECOMP_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("needs real data: set PRUNECOMP_DATA to the shared data folder (e.g. ../shared/data)")
    return Path(value)

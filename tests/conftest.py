import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
os.environ["CHIPBENCH_PLUGINS"] = "doubles"
# Tests run beside other work; their verdicts speak of the backend. The machine-quiet rule is
# tested with injected load figures (tests/test_validity.py) and explicit settings.
os.environ["CHIPBENCH_QUIET_CORES"] = "off"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    """Tests share one cache of exported models, separate from the user's."""
    if "CHIPBENCH_CACHE" not in os.environ:
        os.environ["CHIPBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(params=["1", "0"], ids=["fork-server", "exec"])
def launch(request, monkeypatch):
    """Runs a test once with cells forked from the fork server and once exec'd
    (CHIPBENCH_FORKSERVER), for tests of the runner's isolation that must hold on both paths."""
    monkeypatch.setenv("CHIPBENCH_FORKSERVER", request.param)
    return request.param

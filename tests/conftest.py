import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# No test may pass or fail because of the CPU it runs on: by default every test (and every
# CLI subprocess, which inherits this) sees a CPU without native bf16, so `--precision auto`
# is fp32 at once.  Tests of the other branch set TIERLAB_CPU_NATIVE_BF16=1 themselves;
# tests of the real /proc/cpuinfo reading delete it.
os.environ["TIERLAB_CPU_NATIVE_BF16"] = "0"


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """One token cache for the session: the demo corpus is generated and tokenized once."""
    cache = tmp_path_factory.mktemp("tierlab-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TIERLAB_CACHE", str(cache))
    yield cache
    mp.undo()

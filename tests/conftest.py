import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """One token cache for the session: the demo corpus is generated and tokenized once."""
    cache = tmp_path_factory.mktemp("tierlab-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TIERLAB_CACHE", str(cache))
    yield cache
    mp.undo()

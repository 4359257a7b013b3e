"""The built-in corpus: addition problems written out as text.

``--data demo`` trains on lines like ``"417+86=503"``.  The task is generated, so it needs
no download, and it is learnable at two speeds that a loss curve shows well: the format
(digits, ``+``, ``=``, newlines) is learnt in a few dozen steps, the carrying arithmetic
over the following hundreds.  The text is a pure function of the version constant below,
so every machine trains on byte-identical data.
"""

from __future__ import annotations

import random

DEMO_VERSION = 1
DEMO_LINES = 120_000


def demo_text(lines: int = DEMO_LINES, seed: int = DEMO_VERSION) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        a = rng.randrange(10 ** rng.randint(1, 3))
        b = rng.randrange(10 ** rng.randint(1, 3))
        out.append(f"{a}+{b}={a + b}\n")
    return "".join(out)

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


# --objective classify on --data demo: the same arithmetic with the operator hidden, labelled by it.
DEMO_ROWS_VERSION = 1
DEMO_ROWS = 20_000
_OPERATORS = (("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b))


def demo_rows_csv(rows: int = DEMO_ROWS, seed: int = DEMO_ROWS_VERSION) -> str:
    """``text,label`` rows like ``"17?6=102",times``: which operator makes the line true.

    Learnable by degrees, as the demo text is: the size of the result against the operands
    tells the product at once, the sign a difference, and the rest takes the arithmetic.
    A pure function of the version constant: every machine classifies byte-identical rows.
    """
    rng = random.Random(seed)
    out = ["text,label\n"]
    for _ in range(rows):
        a, b = rng.randrange(1, 10 ** rng.randint(1, 2)), rng.randrange(1, 10 ** rng.randint(1, 2))
        name, apply = _OPERATORS[rng.randrange(3)]
        out.append(f"{a}?{b}={apply(a, b)},{name}\n")
    return "".join(out)

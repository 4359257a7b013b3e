"""The ``tierlab`` command's entry point: a Ctrl-C while the command line itself loads is a plain interrupt too."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:  # (the CLI's modules load in a fraction of a second; torch comes later, held)
        sys.stderr.write("tierlab: interrupted\n")
        return 130
    return cli_main()

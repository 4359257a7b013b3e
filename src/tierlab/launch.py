"""What torchrun told this process (RANK, WORLD_SIZE, LOCAL_RANK), read in one place and without importing torch.

The CLI reads it before anything heavy is imported (to label what ranks other than 0
print); :mod:`tierlab.train.distributed` reads it to join the job.
"""

from __future__ import annotations

import os

from .errors import ConfigError


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment, or None when not launched by it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ConfigError(f"RANK={os.environ['RANK']!r} / WORLD_SIZE={os.environ['WORLD_SIZE']!r} are not numbers.",
                          "launch with torchrun, which sets them, or unset them.") from None
    return rank, world, local


def torchrun_rank() -> int | None:
    """This process's rank in a torchrun job of several processes; None outside one.

    Malformed variables count as "outside": this only labels output, and ``tierlab
    train`` reports them as a user error when it joins the job.
    """
    try:
        found = torchrun_env()
    except ConfigError:
        return None
    return found[0] if found is not None and found[1] > 1 else None

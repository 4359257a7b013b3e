"""Fault injection for the kill-and-resume tests, kept out of tierlab's own code.

A test that must kill a training process *while* it writes a checkpoint puts this folder on
the process's PYTHONPATH (see helpers.checkpoint_pause_env) and sets
TIERLAB_TEST_CKPT_PAUSE=SECONDS: Python imports this module at start-up, and every
``torch.save`` into an open file then pauses once, after its first write, so the file is
half-written while the test sends its signal.
"""

import os
import time

_PAUSE = float(os.environ.get("TIERLAB_TEST_CKPT_PAUSE") or 0)

if _PAUSE > 0:
    import torch

    class _PausingWriter:
        def __init__(self, fh):
            self._fh, self._paused = fh, False

        def write(self, data):
            written = self._fh.write(data)
            if not self._paused:
                self._paused = True
                self._fh.flush()
                time.sleep(_PAUSE)
            return written

        def __getattr__(self, name):
            return getattr(self._fh, name)

    _save = torch.save

    def _pausing_save(obj, f, *args, **kwargs):
        return _save(obj, _PausingWriter(f) if hasattr(f, "write") else f, *args, **kwargs)

    torch.save = _pausing_save

"""The shared test helpers check what they claim: a check that cannot fail would hide a broken resume."""

import json

import pytest
from helpers import assert_written_once


def _run_dir(tmp_path, events, metrics):
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return tmp_path


def test_written_once_passes_a_clean_run_and_catches_a_record_written_twice(tmp_path):
    events = [{"event": "run_start"}, {"event": "step_skipped", "step": 3}, {"event": "loss_scale_change", "step": 3},
              {"event": "checkpoint", "step": 5}]
    metrics = [{"kind": "train", "step": s} for s in (1, 2, 3, 4, 5)] + [{"kind": "eval", "step": 5}]
    assert_written_once(_run_dir(tmp_path, events, metrics))  # one skip and one scale change at one step: fine
    with pytest.raises(AssertionError, match="written twice"):
        assert_written_once(_run_dir(tmp_path, events + [{"event": "checkpoint", "step": 5}], metrics))
    with pytest.raises(AssertionError, match="written twice"):
        assert_written_once(_run_dir(tmp_path, events, metrics + [{"kind": "train", "step": 4}]))
    with pytest.raises(AssertionError, match="out of step order"):
        assert_written_once(_run_dir(tmp_path, events, metrics[:3] + metrics[4:] + [metrics[3]]))

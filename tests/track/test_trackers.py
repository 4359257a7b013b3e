"""A tracker that fails can never stop training."""

import pytest

import tierlab
from helpers import fast_config
from tierlab.track.trackers import MAX_FAILURES, Trackers
from tierlab.train import api


class Recording:
    name = "recording"

    def __init__(self):
        self.logged = []

    def start(self, config):
        self.config = config

    def log(self, record):
        self.logged.append(record)

    def event(self, record):
        pass

    def close(self):
        pass


class FailsAtStart(Recording):
    name = "broken-start"

    def start(self, config):
        raise ConnectionError("tracker service unreachable")


class FailsFromCall(Recording):
    """Raises on the n-th log call and every one after it."""

    name = "flaky"

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def log(self, record):
        self.calls += 1
        if self.calls >= self.n:
            raise RuntimeError(f"upload failed on call {self.calls}")
        super().log(record)


def test_failing_sinks_never_stop_training(tmp_path, monkeypatch, caplog):
    healthy, flaky = Recording(), FailsFromCall(5)
    monkeypatch.setattr(api.tracker_sinks, "make_sinks", lambda options, run_dir: [FailsAtStart(), flaky, healthy])
    run = tierlab.train(config=fast_config(tmp_path, max_steps=40, log_every=2, eval_every=0))
    assert run.summary["status"] == "completed"
    assert [r["step"] for r in run.metrics("train")] == list(range(2, 41, 2))  # metrics.jsonl is complete
    assert len(healthy.logged) == 20  # the healthy sink saw everything
    assert flaky.calls == 4 + MAX_FAILURES  # disabled after 3 consecutive failures: no more calls
    failures = run.events("tracker_failed")
    assert [f["sink"] for f in failures] == ["broken-start"] + ["flaky"] * MAX_FAILURES
    assert failures[0]["error"] == "ConnectionError" and "unreachable" in failures[0]["message"]
    assert [f["consecutive"] for f in failures[1:]] == [1, 2, 3]
    assert [(d["sink"], d["reason"]) for d in run.events("tracker_disabled")] == [
        ("broken-start", "it failed to start"), ("flaky", "3 consecutive failures")]
    warnings = [r.getMessage() for r in caplog.records if "tracker flaky failed" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError" in warnings[0]  # logged once, with type and message


def test_a_success_resets_the_failure_count():
    events = []

    class Alternating(Recording):
        name = "alternating"
        calls = 0

        def log(self, record):
            self.calls += 1
            if self.calls % 2:
                raise OSError("hiccup")

    sink = Alternating()
    trackers = Trackers([sink], lambda event, **fields: events.append((event, fields)))
    trackers.start({})
    for step in range(10):
        trackers.log({"kind": "train", "step": step})
    assert trackers.active == ["alternating"] and sink.calls == 10
    assert all(fields["consecutive"] == 1 for _, fields in events)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupts_pass_through_the_isolation(exc):
    class Interrupting(Recording):
        name = "interrupting"

        def log(self, record):
            raise exc()

    trackers = Trackers([Interrupting()], lambda *a, **k: None)
    with pytest.raises(exc):
        trackers.log({"kind": "train", "step": 1})


def test_a_tracker_failing_at_close_leaves_a_completed_run_completed(tmp_path, monkeypatch):
    """Issue 19.7: the failure is one more tracker_failed event, written while events.jsonl is still open."""

    class FailsAtClose(Recording):
        name = "fails-at-close"

        def close(self):
            raise ConnectionError("server went away")

    monkeypatch.setattr(api.tracker_sinks, "make_sinks", lambda options, run_dir: [FailsAtClose()])
    run = tierlab.train(config=fast_config(tmp_path, no_plots=True))
    assert run.summary["status"] == "completed"
    events = run.events()
    assert events[-1]["event"] == "tracker_failed" and events[-1]["call"] == "close"
    assert [e["event"] for e in events].count("run_end") == 1

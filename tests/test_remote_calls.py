"""The fan-out primitive (``spawn_all`` / ``Fanout``) and the call status vocabulary, on fake
``FunctionCall`` objects: what cross-validation folds, sweep points and predict shards will use."""

from __future__ import annotations

import json

import pytest

from connectodistill.remote import boundary
from connectodistill.remote.calls import (
    CANCELLED,
    EXPIRED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    Fanout,
    poll_call,
    spawn_all,
)
from remote_fakes import DEPRECATIONS_ARE_ERRORS, FakeCall, Offline

pytestmark = pytest.mark.filterwarnings(DEPRECATIONS_ARE_ERRORS)


def square(x: int, fail: str | None = None) -> dict:
    if fail == "raise":
        raise RuntimeError(f"node lost while on {x}")
    if fail == "return":
        return {"status": "failed", "reason": "out of memory", "error": f"CUDA out of memory on {x}"}
    return {"x": x, "y": x * x}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    off = Offline(tmp_path / "volumes").install(monkeypatch)
    off.hold = True  # every call runs until released
    off.run = lambda fn, kwargs: fn(**kwargs)
    return off


def release(offline, *ids):
    for i in ids:
        offline.by_id[i].hold = False


def test_at_most_max_parallel_run_and_the_rest_start_as_slots_free(offline):
    fan = spawn_all(square, [{"x": i} for i in range(5)], max_parallel=2)
    assert [h.status for h in fan.handles] == [RUNNING, RUNNING, QUEUED, QUEUED, QUEUED]
    assert [h.call_id for h in fan.handles[:2]] == ["fc-1", "fc-2"]
    fan.poll()
    assert fan.counts() == {RUNNING: 2, QUEUED: 3}  # nothing finished: nothing new started
    release(offline, "fc-2")
    fan.poll()
    assert [h.status for h in fan.handles] == [RUNNING, FINISHED, RUNNING, QUEUED, QUEUED]
    assert all(t == 0 for c in offline.by_id.values() for t in c.gets)  # polls never wait

    changes = []

    def tick(seconds):  # time passes: whatever runs now finishes
        release(offline, *offline.by_id)

    fan.wait(interval=5, on_change=lambda h: changes.append((h.index, h.status)), sleep=tick)
    assert fan.results() == [{"x": i, "y": i * i} for i in range(5)]
    assert sorted(changes) == [(0, FINISHED), (2, FINISHED), (3, FINISHED), (3, RUNNING), (4, FINISHED),
                               (4, RUNNING)]
    assert len(offline.calls) == 5


def test_partial_failure_loses_nothing_and_only_the_failed_are_retried(offline):
    inputs = [{"x": 1}, {"x": 2, "fail": "raise"}, {"x": 3, "fail": "return"}, {"x": 4}]
    fan = spawn_all(square, inputs)
    release(offline, *offline.by_id)
    fan.poll()
    assert [h.status for h in fan.handles] == [FINISHED, FAILED, FAILED, FINISHED]
    raised, returned = fan.failed()
    assert (raised.reason, raised.error) == ("RuntimeError", "node lost while on 2")
    assert (returned.reason, returned.error) == ("out of memory", "CUDA out of memory on 3")
    assert fan.results() == [{"x": 1, "y": 1}, None, None, {"x": 4, "y": 16}]
    records = json.loads(json.dumps(fan.records()))  # JSON: can be kept on a volume
    assert [r["call_id"] for r in records] == ["fc-1", "fc-2", "fc-3", "fc-4"]
    assert records[1]["error"] == "node lost while on 2" and records[1]["kwargs"] == inputs[1]

    for h in fan.failed():  # fixed: run them again, the finished ones are kept
        h.kwargs.pop("fail")
    offline.hold = False
    fan.retry_failed()
    assert [h.call_id for h in fan.handles] == ["fc-1", "fc-5", "fc-6", "fc-4"]
    fan.wait(sleep=lambda s: None)
    assert fan.results() == [{"x": i, "y": i * i} for i in (1, 2, 3, 4)]
    assert len(offline.calls) == 6


def test_an_input_that_cannot_start_does_not_stop_the_others(offline, monkeypatch):
    real = boundary.spawn

    def spawn(fn, **kwargs):
        if kwargs["x"] == 2:
            raise ValueError("argument too large to send")
        return real(fn, **kwargs)

    monkeypatch.setattr(boundary, "spawn", spawn)
    fan = spawn_all(square, [{"x": 1}, {"x": 2}, {"x": 3}])
    assert [h.status for h in fan.handles] == [RUNNING, FAILED, RUNNING]
    assert fan.handles[1].reason == "not started" and isinstance(fan.handles[1].exception, ValueError)


def test_a_later_process_resumes_a_fanout_from_its_records(offline):
    fan = spawn_all(square, [{"x": i} for i in range(4)], max_parallel=2)
    release(offline, "fc-1")
    fan.poll()
    records = json.loads(json.dumps(fan.records()))  # what the first process left
    assert [r["status"] for r in records] == [FINISHED, RUNNING, RUNNING, QUEUED]

    again = Fanout.resume(square, records, max_parallel=2)
    assert again.handles[1].call is offline.by_id["fc-2"]  # re-attached by id, not re-run
    offline.hold = False
    release(offline, *offline.by_id)
    again.wait(sleep=lambda s: None)
    assert [h.status for h in again.handles] == [FINISHED] * 4
    assert again.handles[0].result is None  # finished before: its result was in the first process
    assert [h.result for h in again.handles[1:]] == [{"x": i, "y": i * i} for i in (1, 2, 3)]
    assert len(offline.calls) == 4  # nothing spawned twice


def test_cancel_stops_running_calls_and_drops_queued_ones(offline):
    fan = spawn_all(square, [{"x": i} for i in range(3)], max_parallel=2)
    fan.cancel()
    assert [h.status for h in fan.handles] == [CANCELLED] * 3
    assert [c.terminated for c in offline.by_id.values()] == [True, True]
    assert len(offline.calls) == 2


def test_max_parallel_must_be_positive():
    with pytest.raises(ValueError):
        Fanout(square, [{"x": 1}], max_parallel=0)


class Raises:
    """A call whose ``get`` raises ``exc``; ``status``: its root input's InputStatus in the call graph."""

    object_id = "fc-x"

    def __init__(self, exc, status=None):
        self.exc, self.status = exc, status

    def get(self, timeout=None):
        raise self.exc

    def get_call_graph(self):
        from modal.types import InputInfo, InputStatus

        status = InputStatus.PENDING if self.status is None else self.status
        return [InputInfo("in-1", self.object_id, "ta-1", status, "f", "m", [])]


def test_poll_call_maps_each_way_a_call_can_end():
    from modal import exception
    from modal.types import InputStatus

    cases = [
        (TimeoutError(), None, RUNNING, None),  # Modal's own: no result yet (_functions.py:358)
        (TimeoutError("read timed out"), None, FAILED, "TimeoutError"),  # the function's own, after retries
        (exception.OutputExpiredError(), None, EXPIRED, None),
        (exception.FunctionTimeoutError("Function timed out after 3600s"), None, FAILED, "timeout"),
        # A cancel is RemoteError('') (function_utils.py:574); the call graph says TERMINATED.
        (exception.RemoteError(""), InputStatus.TERMINATED, CANCELLED, "cancelled"),
        # The same exception with any other status (an OOM kill reads PENDING) is a failure,
        # whatever its text says.
        (exception.RemoteError(""), InputStatus(10), FAILED, "RemoteError"),
        (exception.RemoteError("cancelled"), InputStatus.FAILURE, FAILED, "RemoteError"),
        (exception.NotFoundError("FunctionCall fc-x not found"), None, EXPIRED, None),
        (KeyError("splits"), None, FAILED, "KeyError"),
    ]
    for exc, status, expected, reason in cases:
        state = poll_call(Raises(exc, status))
        assert (state.status, state.reason) == (expected, reason), exc
    for exc in (exception.ConnectionError("Deadline exceeded"), exception.AuthError("Token missing")):
        with pytest.raises(type(exc)):  # this machine cannot ask: not the call's failure
            poll_call(Raises(exc))
    done = FakeCall(square, {"x": 3}, "fc-y", run=lambda fn, kw: fn(**kw))
    assert poll_call(done).result == {"x": 3, "y": 9}


def test_a_cancelled_fanout_call_reads_cancelled_later(offline):
    """Fanout.cancel() writes no outcome: a later poll of the same call id must still say cancelled."""
    fan = spawn_all(square, [{"x": 1}, {"x": 2}])
    records = fan.records()
    fan.cancel()
    again = Fanout.resume(square, [{**r, "status": RUNNING} for r in records])
    again.poll()
    assert [(h.status, h.reason) for h in again.handles] == [(CANCELLED, "cancelled")] * 2

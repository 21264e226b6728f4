"""Calls on Modal: one status vocabulary, a fan-out primitive, and Modal's errors as one line.

:func:`spawn_all` starts one function over many inputs (at most ``max_parallel`` at a time) and
returns a :class:`Fanout` whose :meth:`~Fanout.poll` reports each call as queued, running,
finished or failed. A failed call never hides the others: every result, every error line and
every call id stays in the handles (and in :meth:`~Fanout.records`, JSON that a later process
can :meth:`~Fanout.resume` from). A single train or eval is a fan-out of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..core.config import RemoteConfig
from ..core.errors import UserError
from . import boundary
from .container import first_line
from .volumes import say

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, EXPIRED = (
    "queued", "running", "finished", "failed", "cancelled", "expired")
DONE = (FINISHED, FAILED, CANCELLED, EXPIRED)


@dataclass
class CallState:
    status: str
    result: Any = None
    reason: str | None = None  # failed: "bad input", "out of memory", "gated", "timeout", ...
    error: str | None = None  # failed: one line


def outcome_of(result: Any) -> CallState:
    """Our container functions return ``{"status": "failed", "reason", "error"}`` instead of
    raising a deterministic failure (so Modal does not retry it)."""
    if isinstance(result, dict) and result.get("status") == FAILED:
        return CallState(FAILED, result, result.get("reason"), result.get("error"))
    return CallState(FINISHED, result)


def client_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean this machine could not ask Modal, not that the call failed."""
    from modal.exception import (
        AuthError,
        ClientClosed,
        ConnectionError,
        InternalError,
        ServiceError,
    )

    return AuthError, ClientClosed, ConnectionError, InternalError, ServiceError


def poll_call(call, timeout: float | None = 0, classify: Callable[[Any], CallState] = outcome_of) -> CallState:
    """Where one call stands, waiting at most ``timeout`` seconds for its result.

    By exception type, never by message text (modal 1.6.4): a bare builtin ``TimeoutError`` is
    "no result yet" (_functions.py:358); ``RemoteError`` is any end without a result
    (function_utils.py:574): a cancel (the call graph says TERMINATED), a kernel OOM kill, an
    eviction or a failed start.
    """
    from modal.exception import (
        FunctionTimeoutError,
        NotFoundError,
        OutputExpiredError,
        RemoteError,
    )

    try:
        result = call.get(timeout=timeout)
    except OutputExpiredError:
        return CallState(EXPIRED, error="Modal no longer holds this call's result")
    except FunctionTimeoutError as e:
        return CallState(FAILED, reason="timeout", error=first_line(e))
    except TimeoutError as e:
        if not e.args:  # Modal's own, bare: no result yet
            return CallState(RUNNING)
        return CallState(FAILED, reason=type(e).__name__, error=first_line(e))  # the function's, after retries
    except NotFoundError:
        return CallState(EXPIRED, error="Modal does not know this call (any more)")
    except client_errors():
        raise  # this machine cannot ask: not the call's failure
    except RemoteError as e:
        if _terminated(call):
            return CallState(CANCELLED, reason="cancelled", error="cancelled on Modal")
        line = first_line(e) if str(e).strip() else (
            "Modal ended the call without a result (out of memory on the host, an eviction or a failed "
            "start: see its logs on the Modal dashboard)")
        return CallState(FAILED, reason="RemoteError", error=line)
    except Exception as e:  # noqa: BLE001 - the remote function's exception, after its retries
        return CallState(FAILED, reason=type(e).__name__, error=first_line(e))
    return classify(result)


def _terminated(call) -> bool:
    """Whether Modal ended ``call`` by a cancel: its own input in the call graph (a root, since it
    was spawned from here: call_graph.py:45-47) has status TERMINATED (types.py:66-78)."""
    from modal.types import InputStatus

    try:
        graph = call.get_call_graph()
    except Exception:  # noqa: BLE001 - best effort (its docstring says so): unknown is not cancelled
        return False
    own = [n for n in graph or [] if n.function_call_id == getattr(call, "object_id", None)]
    return bool(own) and own[0].status == InputStatus.TERMINATED


def wait_call(call, interval: float = 60.0, classify=outcome_of) -> CallState:
    """Block until the call ends (``FunctionCall.get`` in slices, so Ctrl-C is prompt)."""
    while (state := poll_call(call, timeout=interval, classify=classify)).status == RUNNING:
        pass
    return state


def is_connection_error(e: BaseException) -> bool:
    """This machine lost Modal (the client's errors, or the network's), not a call's failure."""
    return isinstance(e, (*client_errors(), OSError)) and not isinstance(e, TimeoutError)


@contextmanager
def keep_running_on_interrupt(what: Callable[[], str | None], follow: str):
    """Around a block that spawns and waits for detached calls (outside ``boundary.running``, so
    that Modal sees the interruption first): a Ctrl-C or a lost connection once something runs
    (``what()`` says so, e.g. "3 run(s) keep running on Modal"; None: nothing started yet) ends
    the command with that line and how to follow it, never with a status of its own.
    Ctrl-C: the line, then KeyboardInterrupt again; a lost connection: a UserError."""
    try:
        yield
    except KeyboardInterrupt:
        if (started := what()) is not None:
            say(f"stopped waiting: {started}; {follow}")
        raise
    except Exception as e:
        started = what() if is_connection_error(e) else None
        if started is None:
            raise
        raise UserError(f"lost the connection to Modal ({first_line(e)}); {started}: {follow}") from e


# ============================================================================ fan-out
@dataclass
class CallHandle:
    """One input of a fan-out and where its call stands."""

    index: int
    kwargs: dict
    status: str = QUEUED
    call_id: str | None = None
    result: Any = None
    reason: str | None = None
    error: str | None = None
    call: Any = field(default=None, repr=False)
    exception: BaseException | None = field(default=None, repr=False)  # when it could not start

    @property
    def done(self) -> bool:
        return self.status in DONE

    def record(self) -> dict:
        return {"index": self.index, "kwargs": self.kwargs, "status": self.status, "call_id": self.call_id,
                "reason": self.reason, "error": self.error}


class Fanout:
    """Calls of one Modal function over many inputs, at most ``max_parallel`` running at once."""

    def __init__(self, fn, kwargs_list: Iterable[dict], max_parallel: int | None = None,
                 classify: Callable[[Any], CallState] = outcome_of):
        if max_parallel is not None and max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.fn, self.max_parallel, self.classify = fn, max_parallel, classify
        self.handles = [CallHandle(i, dict(kw)) for i, kw in enumerate(kwargs_list)]

    def start(self) -> Fanout:
        """Spawn queued inputs while fewer than ``max_parallel`` run."""
        for h in self.handles:
            running = sum(x.status == RUNNING for x in self.handles)
            if self.max_parallel is not None and running >= self.max_parallel:
                break
            if h.status == QUEUED:
                self._spawn(h)
        return self

    def _spawn(self, h: CallHandle) -> None:
        try:
            h.call = boundary.spawn(self.fn, **h.kwargs)
        except Exception as e:  # noqa: BLE001 - kept on the handle; the others go on
            h.status, h.reason, h.error, h.exception = FAILED, "not started", first_line(e), e
            return
        h.call_id, h.status = getattr(h.call, "object_id", None), RUNNING

    def poll(self) -> list[CallHandle]:
        """Ask each running call once (no waiting), then start queued ones in the freed slots."""
        for h in self.handles:
            if h.status == RUNNING:
                state = poll_call(h.call, 0, self.classify)
                if state.status != RUNNING:
                    h.status, h.result, h.reason, h.error = state.status, state.result, state.reason, state.error
        return self.start().handles

    def wait(self, interval: float = 30.0, on_change: Callable[[CallHandle], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> list[CallHandle]:
        """Poll until every input is done; ``on_change(handle)`` for each one that changed."""
        while True:
            before = [h.status for h in self.handles]
            self.poll()
            for h, old in zip(self.handles, before, strict=True):
                if on_change is not None and h.status != old:
                    on_change(h)
            if all(h.done for h in self.handles):
                return self.handles
            sleep(interval)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for h in self.handles:
            out[h.status] = out.get(h.status, 0) + 1
        return out

    def results(self) -> list[Any]:
        """Each input's result, in input order (None where it did not finish)."""
        return [h.result if h.status == FINISHED else None for h in self.handles]

    def failed(self) -> list[CallHandle]:
        return [h for h in self.handles if h.status in (FAILED, EXPIRED)]

    def retry_failed(self) -> Fanout:
        """Queue the failed inputs again (finished ones are kept) and start them."""
        for h in self.failed():
            h.status, h.call, h.call_id, h.result, h.reason, h.error, h.exception = (
                QUEUED, None, None, None, None, None, None)
        return self.start()

    def cancel(self) -> None:
        """Cancel the running calls (their containers too) and drop the queued inputs."""
        for h in self.handles:
            if h.status == RUNNING:
                h.call.cancel(terminate_containers=True)
            if h.status in (RUNNING, QUEUED):
                h.status, h.reason, h.error = CANCELLED, "cancelled", "cancelled"

    def records(self) -> list[dict]:
        """JSON-able state: inputs, call ids, statuses, error lines (see :meth:`resume`)."""
        return [h.record() for h in self.handles]

    @classmethod
    def resume(cls, fn, records: list[dict], max_parallel: int | None = None,
               classify: Callable[[Any], CallState] = outcome_of) -> Fanout:
        """Pick a fan-out up again from :meth:`records` (say, in a later process): running calls
        are re-attached by id, queued inputs start when there is room."""
        fan = cls(fn, [r["kwargs"] for r in records], max_parallel, classify)
        for h, r in zip(fan.handles, records, strict=True):
            h.status, h.call_id, h.reason, h.error = r["status"], r.get("call_id"), r.get("reason"), r.get("error")
            if h.status == RUNNING:
                h.call = boundary.call_from_id(h.call_id)
        return fan


def spawn_all(fn, kwargs_list: Iterable[dict], max_parallel: int | None = None,
              classify: Callable[[Any], CallState] = outcome_of) -> Fanout:
    """Spawn ``fn(**kwargs)`` for each input (at most ``max_parallel`` at once); see :class:`Fanout`."""
    return Fanout(fn, kwargs_list, max_parallel, classify).start()


# ============================================================================ errors
@contextmanager
def modal_errors(rc: RemoteConfig):
    """Modal's set-up and service problems as one-line UserErrors (no traceback)."""
    from modal import exception as me

    try:
        yield
    except me.AuthError as e:
        raise UserError(f"Modal refused the credentials ({first_line(e)}): run `modal setup`") from e
    except me.NotFoundError as e:
        line = first_line(e)
        if "secret" in line.lower():
            raise UserError(
                f"Modal: {line}; create it with `modal secret create {rc.hf_secret} HF_TOKEN=...` "
                f"(or `{rc.wandb_secret} WANDB_API_KEY=...`), or export HF_TOKEN / WANDB_API_KEY here"
            ) from e
        if "volume" in line.lower():
            raise UserError(f"Modal: {line}; volumes are created by the first `train/eval --remote`: "
                            "check the volume names of the remote: section and the Modal environment") from e
        raise UserError(f"Modal: {line}") from e
    except me.ResourceExhaustedError as e:
        raise UserError(f"Modal quota or rate limit reached ({first_line(e)}): see your workspace's limits "
                        "on modal.com, wait, or ask for fewer GPUs") from e
    except me.ImageBuildError as e:
        raise UserError(f"the Modal image failed to build ({first_line(e)}): see the build log above; "
                        "`connectodistill remote check` rebuilds it for cents") from e
    except me.FunctionTimeoutError as e:
        raise UserError(f"the call hit its Modal timeout ({first_line(e)}): raise --timeout, or continue "
                        "a training run with --resume --run-dir NAME") from e
    except me.ConnectionError as e:
        raise UserError(f"could not reach Modal ({first_line(e)}): check the network; a job already "
                        "started keeps running (`connectodistill fetch`)") from e
    except me.PermissionDeniedError as e:
        raise UserError(f"Modal denied the request ({first_line(e)}): check the workspace's permissions") from e
    except me.Error as e:
        raise UserError(f"Modal: {type(e).__name__}: {first_line(e)}") from e

"""The network boundary: every request this machine sends to Modal goes through one of these.

The tests replace them (volumes become local folders, calls run in-process with ``.local()``),
so everything around them runs offline.
"""

from __future__ import annotations

from contextlib import contextmanager


def volume(name: str, create: bool = True):
    """A named Modal volume; ``create=False`` for commands that only read (``fetch``)."""
    import modal

    return modal.Volume.from_name(name, create_if_missing=create)


@contextmanager
def running(app, detach: bool = True):
    """Run the app, build output and logs streamed to this terminal. Detached: a job spawned in
    it keeps running when this process (or the laptop) goes away.

    Modal's runner swallows a Ctrl-C in the block (attached or detached; modal 1.6.4
    runner.py:502-522) and, detached with output on, a lost connection (runner.py:523-529): the
    ``with`` then ends as if the block had finished. Modal still sees both (it prints how to
    follow the app and disconnects with the right reason); then they are raised again here, so
    no caller mistakes an interrupted wait for a finished one.
    """
    import modal
    from modal.exception import ConnectionError as ModalConnectionError

    swallowed: list[BaseException] = []
    with modal.enable_output(), app.run(detach=detach):
        try:
            yield
        except (KeyboardInterrupt, ModalConnectionError) as e:
            swallowed.append(e)
            raise
    if swallowed:  # reached only when Modal swallowed it
        raise swallowed[0]


def call(fn, **kwargs):
    """A short blocking call (the CPU functions: weights, `remote check`)."""
    return fn.remote(**kwargs)


def spawn(fn, **kwargs):
    """Start a call without waiting: a ``modal.FunctionCall`` (``object_id``, ``get``, ``cancel``)."""
    return fn.spawn(**kwargs)


def call_from_id(call_id: str):
    import modal

    return modal.FunctionCall.from_id(call_id)


def log_lines(call, tail: int = 20):
    """The call's last ``tail`` log lines, then new ones as they come, until it ends."""
    for entry in call.logs.tail(entries=tail):
        yield entry.message
    for entry in call.logs.stream():
        yield entry.message

"""Offline stand-ins for Modal, shared by the test_remote*.py files.

``Offline`` replaces :mod:`connectodistill.remote.boundary`, the one module that talks to Modal:
volumes become local folders (``FakeVolume``, also what the in-process container functions see
as their mounts), ``.remote()`` ``.local()``, and ``.spawn()`` a ``FakeCall`` that runs the
function in-process when its result is first asked for (or never, while ``hold`` is set: a job
still running on Modal). ``boundary.running`` itself stays real: only ``modal.App.run`` under it
is replaced, by :func:`fake_app_run`, which swallows what Modal's runner swallows.

Modal's client as read in modal 1.6.4 (``modal/X.py:N`` = that file of the installed package):

- ``with app.run(detach=...)``: a ``KeyboardInterrupt`` in the body is swallowed, attached or
  detached (runner.py:502-522: it prints how to follow the app, disconnects and ``return``s);
  a ``modal.exception.ConnectionError`` is swallowed when detached with output enabled
  (runner.py:523-529), raised otherwise (runner.py:530); anything else propagates
  (runner.py:531-534). The ``with`` statement then completes normally: the next line runs.
- ``FunctionCall.get(timeout)``: no result yet is a bare builtin ``TimeoutError()``
  (_functions.py:357-358); a result Modal no longer holds ``OutputExpiredError()`` (:355-356).
- A cancelled call: the container answers ``GenericResult(status=TERMINATED)`` with no text
  (_runtime/container_io_manager.py:320-331), which ``get`` raises as ``RemoteError('')``
  (_utils/function_utils.py:537-574). Only ``FunctionCall.get_call_graph()`` (_functions.py:2498-2520)
  tells it apart: the call's root ``InputInfo`` has ``status=InputStatus.TERMINATED``
  (types.py:66-78, 346-356; call_graph.py:45-47). ``InputCancellation`` is never raised here.
"""

from __future__ import annotations

import io
import shutil
from contextlib import contextmanager
from pathlib import Path

from connectodistill.core.config import RemoteConfig
from connectodistill.remote import boundary, container

RC = RemoteConfig(models_volume="t-models", datasets_volume="t-datasets", runs_volume="t-runs",
                  hf_secret="hf-secret", wandb_secret="wandb-secret")
MOUNT_OF = {RC.models_volume: "models", RC.datasets_volume: "datasets", RC.runs_volume: "runs",
            # the defaults, which the CLI uses
            RemoteConfig().models_volume: "models", RemoteConfig().datasets_volume: "datasets",
            RemoteConfig().runs_volume: "runs"}
LOCAL_WARNING = "ignore:The .* function is executing locally:UserWarning"
DEPRECATIONS_ARE_ERRORS = "error::modal.exception.DeprecationError"


class FakeVolume:
    """A Modal volume's client API (listdir, read_file, batch_upload) over a local folder."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads: list[str] = []

    def _entry(self, p: Path):
        from modal.types import FileEntry, FileEntryType

        kind = FileEntryType.FILE if p.is_file() else FileEntryType.DIRECTORY
        st = p.stat()
        return FileEntry(path=p.relative_to(self.root).as_posix(), type=kind, mtime=int(st.st_mtime),
                         size=st.st_size)

    def listdir(self, path: str, *, recursive: bool = False):
        p = self.root / path.lstrip("/")
        if not p.exists():
            raise FileNotFoundError(path)  # Modal raises NotFoundError; both are handled
        if p.is_file():
            return [self._entry(p)]
        return [self._entry(q) for q in sorted(p.rglob("*") if recursive else p.iterdir())]

    def read_file(self, path: str):
        data = (self.root / path.lstrip("/")).read_bytes()
        for i in range(0, max(len(data), 1), 1 << 16):
            yield data[i:i + (1 << 16)]

    @contextmanager
    def batch_upload(self, force: bool = False):
        batch = _Batch()
        yield batch
        for src, dst in batch.files:  # written at the end, all at once, as Modal does
            target = self.root / dst.lstrip("/")
            if target.exists() and not force:
                raise FileExistsError(dst)
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, io.IOBase):
                target.write_bytes(src.read())
            else:
                shutil.copyfile(src, target)
            self.uploads.append(dst)


class _Batch:
    def __init__(self):
        self.files = []

    def put_file(self, local, remote_path, mode=None):
        self.files.append((local if isinstance(local, io.IOBase) else Path(local), str(remote_path)))


class FakeCall:
    """A ``modal.FunctionCall``: ``object_id``, ``get(timeout)``, ``cancel()``, and logs.

    ``hold``: False runs the function at the first ``get``; True keeps it running until
    released; an int lets that many waits time out first. ``exc_on_get`` is raised by ``get``
    (a lost connection, Ctrl-C).
    """

    def __init__(self, fn, kwargs: dict, object_id: str, hold: bool = False, run=None):
        self.fn, self.kwargs, self.object_id, self.hold = fn, kwargs, object_id, hold
        self.killed: str | None = None  # "oom": ended by the kernel's OOM killer (no result data)
        self._run = run or (lambda fn, kwargs: fn.local(**kwargs))
        self.state, self.result, self.exc, self.terminated = "running", None, None, None
        self.log = [f"[{object_id}] started\n"]
        self.gets: list[float | None] = []
        self.exc_on_get: BaseException | None = None

    def run(self):
        try:
            self.result = self._run(self.fn, self.kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised by get(), as Modal does
            self.exc = e
        self.state = "done"
        self.log.append(f"[{self.object_id}] done\n")

    def get(self, timeout=None):
        self.gets.append(timeout)
        if self.exc_on_get is not None:
            raise self.exc_on_get
        if self.state == "cancelled" or self.killed:
            from modal.exception import RemoteError

            # TERMINATED (or KERNEL_OOM_KILL) without data: RemoteError(result.exception), and the
            # container sends no exception text (container_io_manager.py:328, function_utils.py:574)
            raise RemoteError("")
        if self.state == "running":
            if self.hold:  # True: runs until released; N: the next N waits time out
                if not isinstance(self.hold, bool):
                    self.hold -= 1
                if sum(1 for t in self.gets if t) > 100:
                    raise AssertionError(f"{self.object_id} is held: nothing will release it")
                raise TimeoutError()
            self.run()
        if self.exc is not None:
            raise self.exc
        return self.result

    def cancel(self, terminate_containers: bool = False):
        self.state, self.terminated = "cancelled", terminate_containers

    def get_call_graph(self):
        """The call's own input, a root of the graph (call_graph.py:45-47). KERNEL_OOM_KILL has no
        InputStatus member: ``InputStatus._missing_`` makes it PENDING (types.py:76-78)."""
        from modal.types import InputInfo, InputStatus

        status = {"cancelled": InputStatus.TERMINATED, "running": InputStatus.PENDING}.get(self.state)
        if status is None:  # done
            status = InputStatus.FAILURE if self.exc is not None else InputStatus.SUCCESS
        if self.killed:
            status = InputStatus(10)  # GENERIC_STATUS_KERNEL_OOM_KILL -> PENDING
        return [InputInfo(input_id=f"in-{self.object_id}", function_call_id=self.object_id, task_id="ta-1",
                          status=status, function_name=getattr(self.fn, "__name__", "f"), module_name="m",
                          children=[])]


class UnknownCall:
    """What ``FunctionCall.from_id`` gives for an id Modal has forgotten: it fails when used."""

    def __init__(self, object_id: str):
        self.object_id = object_id

    def get(self, timeout=None):
        from modal.exception import NotFoundError

        raise NotFoundError(f"FunctionCall {self.object_id} not found")

    cancel = get_call_graph = get


class Offline:
    """Replaces ``connectodistill.remote.boundary``: volumes, app.run(), .remote(), .spawn()."""

    def __init__(self, root: Path):
        self.root = root
        mounts = {mount: FakeVolume(root / mount) for mount in container.MOUNTS}
        self.volumes = {name: mounts[mount] for name, mount in MOUNT_OF.items()}
        self.calls: list[dict] = []  # kwargs of each spawned call
        self.blocking: list[dict] = []  # kwargs of each .remote() call
        self.by_id: dict[str, FakeCall] = {}
        self.runs: list[bool] = []  # detach flag of each app.run()
        self.hold = False  # spawned calls stay "running" until released
        self.run = None  # (fn, kwargs) -> result, instead of fn.local(**kwargs)
        self.on_spawn = None  # (FakeCall) -> None, e.g. to make its get() raise

    def install(self, monkeypatch):
        import modal

        monkeypatch.setenv(container.ROOT_ENV, str(self.root))
        monkeypatch.setattr(boundary, "volume", self.volume)
        # Under the real boundary.running; a function, so that it binds to the app like the method.
        monkeypatch.setattr(modal.App, "run", lambda app, **kw: self.app_run(app, **kw))
        monkeypatch.setattr(boundary, "call", self.call)
        monkeypatch.setattr(boundary, "spawn", self.spawn)
        monkeypatch.setattr(boundary, "call_from_id", self.call_from_id)
        monkeypatch.setattr(boundary, "log_lines", lambda call, tail=20: iter(list(call.log)))
        return self

    def volume(self, name, create=True):
        if name not in self.volumes:
            from modal.exception import NotFoundError

            raise NotFoundError(f"Volume '{name}' not found in environment 'main'")
        return self.volumes[name]

    def app_run(self, app, *, name=None, client=None, detach=False, interactive=False, environment_name=None):
        """``modal.App.run`` (app.py:530-596), network left out: see :func:`fake_app_run`."""
        self.runs.append(detach)
        return fake_app_run(app, detach)

    def call(self, fn, **kwargs):
        self.blocking.append(kwargs)
        return fn.local(**kwargs)

    def spawn(self, fn, **kwargs):
        self.calls.append(kwargs)
        call = FakeCall(fn, kwargs, f"fc-{len(self.by_id) + 1}", hold=self.hold, run=self.run)
        self.by_id[call.object_id] = call
        if self.on_spawn is not None:
            self.on_spawn(call)
        return call

    def call_from_id(self, call_id):
        return self.by_id.get(call_id) or UnknownCall(call_id)

    @property
    def uploads(self) -> int:
        """Files uploaded so far, not counting the small call records."""
        return sum(sum(not u.startswith(f"/{container.CALLS_DIR}/") for u in v.uploads)
                   for v in {id(v): v for v in self.volumes.values()}.values())


@contextmanager
def fake_app_run(app, detach: bool):
    """What modal's runner does around the ``with app.run(detach=...)`` body (runner.py:489-534),
    minus the network: it swallows a Ctrl-C in both modes and a lost connection when detached
    with output on, printing its own lines through the output manager as the runner does."""
    from modal._output.manager import OutputManager
    from modal.exception import ConnectionError as ModalConnectionError

    output = OutputManager.get()  # runner.py:415
    try:
        yield app
    except KeyboardInterrupt:  # runner.py:502-522: swallowed, attached or detached
        if detach:
            output.step_completed("Shutting down Modal client.")
            output.print("The detached App will keep running. ... modal app logs ap-FAKE")
        else:
            output.print("Disconnecting from Modal - This will terminate your Modal app in a few seconds.\n")
            output.step_completed("App aborted.")
        return
    except ModalConnectionError:  # runner.py:523-530: swallowed only detached, output on
        if detach and output.is_enabled:
            output.print(":white_exclamation_mark: Connection lost!")
            return
        raise
    output.step_completed("App completed.")  # runner.py:545-551


class Trap:
    """Any use of a volume fails the test: nothing may be sent."""

    def __getattr__(self, name):
        raise AssertionError(f"reached Modal: volume.{name}")

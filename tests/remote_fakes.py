"""Offline stand-ins for Modal, shared by the test_remote*.py files.

``Offline`` replaces :mod:`connectodistill.remote.boundary`, the one module that talks to Modal:
volumes become local folders (``FakeVolume``, also what the in-process container functions see
as their mounts), ``app.run()`` a no-op, ``.remote()`` ``.local()``, and ``.spawn()`` a
``FakeCall`` that runs the function in-process when its result is first asked for (or never,
while ``hold`` is set: a job still running on Modal).
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
        if self.state == "cancelled":
            from modal.exception import RemoteError

            raise RemoteError("Function call was cancelled by the user")
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


class UnknownCall:
    """What ``FunctionCall.from_id`` gives for an id Modal has forgotten: it fails when used."""

    def __init__(self, object_id: str):
        self.object_id = object_id

    def get(self, timeout=None):
        from modal.exception import NotFoundError

        raise NotFoundError(f"FunctionCall {self.object_id} not found")

    cancel = get


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
        monkeypatch.setenv(container.ROOT_ENV, str(self.root))
        monkeypatch.setattr(boundary, "volume", self.volume)
        monkeypatch.setattr(boundary, "running", self.running)
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

    @contextmanager
    def running(self, app, detach=True):
        """Like modal's ``app.run()``: in a detached app a Ctrl-C ends the block, not the app,
        and is swallowed (the runner prints how to follow the app, and returns)."""
        self.runs.append(detach)
        try:
            yield
        except KeyboardInterrupt:
            if not detach:
                raise

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


class Trap:
    """Any use of a volume fails the test: nothing may be sent."""

    def __getattr__(self, name):
        raise AssertionError(f"reached Modal: volume.{name}")

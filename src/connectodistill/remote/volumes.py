"""This machine's view of the volumes: content-addressed uploads, small JSON records, downloads.

Every function takes a volume object (``modal.Volume`` or the tests' local-folder fake) and uses
only its client API: ``listdir``, ``read_file``, ``batch_upload``; ``training_links`` looks the
volumes up itself (through ``boundary``) to upload what one training reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from datetime import datetime
from pathlib import Path, PurePosixPath

from ..core.config import RemoteConfig, TrainConfig
from . import boundary
from .container import EVAL_DIR, EVAL_SUMMARY, RUN_CONFIG, TRAIN_DIR


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def listdir(volume, path: str, recursive: bool = False) -> list:
    from modal.exception import NotFoundError

    try:
        return list(volume.listdir(path, recursive=recursive))
    except (FileNotFoundError, NotFoundError):
        return []


def _files(path: Path) -> list[tuple[str, Path]]:
    """(relative posix path, file) of a file or folder; a run folder's checkpoints/ stays out."""
    if path.is_file():
        return [(path.name, path)]
    return sorted(
        (p.relative_to(path).as_posix(), p) for p in path.rglob("*")
        if p.is_file() and p.relative_to(path).parts[0] != "checkpoints"
    )


def sha256(path: Path) -> str:
    from ..core.data import sha256_file as file_hash

    if path.is_file():
        return file_hash(path)
    return hashlib.sha256("".join(f"{rel}\0{file_hash(p)}\n" for rel, p in _files(path)).encode()).hexdigest()


def upload(volume, mount: str, local: Path) -> str:
    """Upload a file or folder to ``/<sha256>/<name>`` unless it is there; return ``mount/...``."""
    local = Path(local)
    key = f"{sha256(local)}/{local.name}"
    if listdir(volume, key):
        say(f"{local} already on Modal")
    else:
        with volume.batch_upload() as batch:
            for rel, path in _files(local):
                batch.put_file(path, f"/{key}" if local.is_file() else f"/{key}/{rel}")
        say(f"uploaded {local}")
    return f"{mount}/{key}"


def training_links(cfg: TrainConfig, rc: RemoteConfig, model_dir: Path | None) -> dict[str, str]:
    """Upload what a training reads from this machine: the merged file with the files merge wrote
    beside it (DPO's pairs come from ``<stem>_responses.parquet``), a local base model and, for
    dpo/grpo, the ``--from`` run folder (its adapter, prompts and splits); return the links."""
    merged = Path(cfg.augmented_dataset)
    datasets = boundary.volume(rc.datasets_volume)
    links = {str(merged): upload(datasets, "datasets", merged)}
    for side in (merged.with_name(f"{merged.stem}_responses.parquet"),
                 merged.with_name(f"{merged.stem}_metadata.json")):  # merging.output_paths
        if side.is_file():
            links[str(side)] = upload(datasets, "datasets", side)
    if model_dir is not None:
        links[cfg.model] = upload(boundary.volume(rc.models_volume), "models", model_dir)
    if cfg.from_run is not None:
        links[str(cfg.from_run)] = upload(datasets, "datasets", Path(cfg.from_run))
    return links


def read_json(volume, path: str) -> dict | None:
    if not listdir(volume, path):
        return None
    return json.loads(b"".join(volume.read_file(path)))


def write_json(volume, path: str, data: dict) -> None:
    """Write (or overwrite) one small JSON file on a volume, from this machine."""
    with volume.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(json.dumps(data, indent=2).encode()), f"/{path}")


def download(volume, remote_dir: str, local_dir: Path) -> Path:
    """Copy a run or eval folder from the runs volume (without checkpoints/) to ``local_dir``."""
    from modal.types import FileEntryType

    n = 0
    for entry in listdir(volume, remote_dir, recursive=True):
        rel = PurePosixPath(entry.path.lstrip("/")).relative_to(remote_dir)
        if entry.type != FileEntryType.FILE or rel.parts[0] == "checkpoints":
            continue
        dest = Path(local_dir, *rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with open(tmp, "wb") as f:
            for chunk in volume.read_file(entry.path):
                f.write(chunk)
        tmp.replace(dest)
        n += 1
    say(f"downloaded {n} files to {local_dir}")
    return Path(local_dir)


def list_folders(volume) -> list[dict]:
    """Run and eval folders on the runs volume: name, kind, finished, checkpoints, modified."""
    from modal.types import FileEntryType

    rows = []
    for kind, done in ((TRAIN_DIR, RUN_CONFIG), (EVAL_DIR, EVAL_SUMMARY)):
        for entry in listdir(volume, kind):
            if entry.type != FileEntryType.DIRECTORY:
                continue
            name = PurePosixPath(entry.path).name
            inside = listdir(volume, f"{kind}/{name}")
            names = {PurePosixPath(e.path).name for e in inside}
            rows.append({"name": name, "kind": kind, "finished": done in names,
                         "checkpoints": "checkpoints" in names,
                         "modified": stamp(max([entry.mtime, *(e.mtime for e in inside)]))})
    return rows


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).isoformat(" ", "seconds")

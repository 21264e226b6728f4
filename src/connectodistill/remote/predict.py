"""``predict --remote --shards N``: the input split into N shards, one GPU container each, merged here.

- The input is read once, in order, and split into N contiguous shards of whole chunks; each
  shard's rows (and, for a segment table, only the images those rows name) are staged under
  ``<output>/.remote/`` and uploaded to the datasets volume, content-addressed.
- One call per shard (:func:`~.calls.spawn_all`, all at once) runs the local ``predict`` into
  ``predict/<name>/shard-NNNN/`` on the runs volume, committing after every chunk: a retried
  or preempted call resumes from its chunks.
- Finished shards' chunks come back to ``<output>/shards/shard-NNNN/chunks/`` and are merged into
  one output in input order (``prediction.write_outputs``). A failed shard is retried alone,
  once; a rerun skips the shards already here, downloads the ones finished on the volume, re-attaches
  the calls still running (``remote_shards.json``) and starts only the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from ..core.config import PredictConfig, RemoteConfig
from ..core.errors import UserError
from . import boundary
from .app import declare, resources
from .calls import (
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    Fanout,
    keep_running_on_interrupt,
    modal_errors,
)
from .container import PREDICT_DIR
from .volumes import download, listdir, say, upload

__all__ = ["predict_remote", "shard_ranges"]

STATE = "remote_shards.json"
SHARDS_DIR, STAGE_DIR = "shards", ".remote"
WAIT_SECONDS = 30.0


def shard_ranges(total: int, chunk_size: int, shards: int) -> list[tuple[int, int]]:
    """N contiguous (start, stop) row ranges of whole chunks, as equal as can be (no empty one)."""
    n_chunks = -(-total // chunk_size)
    shards = max(1, min(shards, n_chunks))
    bounds = [round(k * n_chunks / shards) for k in range(shards + 1)]
    return [(b * chunk_size, min(e * chunk_size, total)) for b, e in zip(bounds, bounds[1:], strict=False)]


def _shard_name(k: int) -> str:
    return f"shard-{k:04d}"


def _local_complete(out: Path, k: int, rng: tuple[int, int], chunk_size: int) -> bool:
    from ..prediction.files import done_chunks

    total = rng[1] - rng[0]
    return len(done_chunks(out / SHARDS_DIR / _shard_name(k), rng[0], total, chunk_size)) == -(-total // chunk_size)


def _shard_files(out: Path, k: int, rng: tuple[int, int], chunk_size: int) -> list[Path]:
    n = -(-(rng[1] - rng[0]) // chunk_size)
    return [out / SHARDS_DIR / _shard_name(k) / "chunks" / f"chunk-{i:06d}.parquet" for i in range(n)]


def predict_remote(cfg: PredictConfig, rc: RemoteConfig) -> Path:
    """Predict on Modal, N shards at once; return the local output folder (merged)."""
    from ..core.data import atomic_write_json
    from ..prediction.recipe import (
        MANIFEST,
        SUMMARY,
        check_output,
        letter_probabilities_available,
        plan,
        write_outputs,
    )
    from .dispatch import _local_input

    res = resources(rc)
    p = plan(cfg, remote=True)  # every check a local run makes, before anything is sent
    out, cs = Path(cfg.output), cfg.chunk_size
    ranges = shard_ranges(p.source.total, cs, cfg.shards or 1)
    check_output(out, p.manifest, cfg.force)
    state = _read_state(out)
    if state and state.get("ranges") != [list(r) for r in ranges] and not cfg.force:
        raise UserError(f"{out} holds a remote prediction in {len(state['ranges'])} shards, not {len(ranges)}: "
                        "rerun with the same --shards to resume it, or pass --force to start over")
    base_model = p.settings[0]["base_model"] if p.kind != "export" else None
    base_local = _local_input(base_model, "base model") if base_model else None
    digest = hashlib.sha256(json.dumps([p.manifest, ranges], sort_keys=True).encode()).hexdigest()[:12]
    stem = re.sub(r"[^\w.-]+", "-", out.resolve().name)
    name = f"{stem}-{digest}"
    if cfg.force and out.is_dir():
        for sub in (SHARDS_DIR, STAGE_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
        state = {}
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MANIFEST).is_file() or cfg.force:
        atomic_write_json(out / MANIFEST, {**p.manifest, "about": {"input": str(cfg.input), "remote": name}})
    remote = declare(rc)
    with modal_errors(rc):
        runs = boundary.volume(rc.runs_volume)
        status = {}
        for k, rng in enumerate(ranges):
            if _local_complete(out, k, rng, cs):
                status[k] = "here"
            elif listdir(runs, f"{PREDICT_DIR}/{name}/{_shard_name(k)}/{SUMMARY}"):
                status[k] = "volume"
            else:
                status[k] = "todo"
        todo = [k for k, s in status.items() if s == "todo"]
        counts = {s: sum(v == s for v in status.values()) for s in ("here", "volume", "todo")}
        say(f"predict {name}: {p.source.total} segments in {len(ranges)} shards on Modal ({res.eval_gpu} each); "
            f"{counts['here']} here already, {counts['volume']} finished on the volume, {counts['todo']} to run")
        fan = None
        if todo:
            links = _stage_model(cfg, p, out, rc, base_model, base_local)
            kwargs = {k: _shard_kwargs(cfg, p, out, rc, name, k, rng, links) for k, rng in
                      _stage_inputs(p, out, ranges, set(todo))}

            def started():  # remote_shards.json is saved on every change: a rerun re-attaches them
                n = sum(h.status == RUNNING for h in fan.handles) if fan is not None else 0
                return f"{n} shard(s) keep running on Modal" if n else None

            with keep_running_on_interrupt(started, "rerun the same command to pick them up"), \
                    boundary.running(remote.app):
                if base_model and base_local is None:
                    from .dispatch import _prefetch

                    _prefetch(remote, rc, base_model)
                fan = _fanout(remote.predict, todo, kwargs, state)
                _save_state(out, name, ranges, todo, fan)
                _wait(fan, todo, out, name, ranges)
                if fan.failed():
                    say(f"retrying {len(fan.failed())} failed shard(s) alone")
                    fan.retry_failed()
                    _save_state(out, name, ranges, todo, fan)
                    _wait(fan, todo, out, name, ranges)
            for h, k in zip(fan.handles, todo, strict=True):
                if h.status == FINISHED:
                    status[k] = "volume"
        for k, s in status.items():
            if s == "volume":
                download(runs, f"{PREDICT_DIR}/{name}/{_shard_name(k)}/chunks",
                         out / SHARDS_DIR / _shard_name(k) / "chunks")
    failed = [k for k, rng in enumerate(ranges) if not _local_complete(out, k, rng, cs)]
    if failed:
        lines = "; ".join(_failure(fan, todo, k) for k in failed)
        raise UserError(f"{len(failed)} of {len(ranges)} shards failed ({lines}); the others are kept in "
                        f"{out / SHARDS_DIR}: rerun the same command to do only what is missing")
    files = [f for k, rng in enumerate(ranges) for f in _shard_files(out, k, rng, cs)]
    summary = write_outputs(out, files, threshold=p.threshold, triage=p.triage, csv_too=cfg.csv,
                            extra_errors=p.source.bad_lines)
    summary.update(input=str(cfg.input), input_kind=p.source.kind, model=str(cfg.adapter_path or cfg.model),
                   model_kind=p.kind, dry_run=cfg.dry_run, chunk_size=cs, chunks=len(files),
                   letter_probabilities=not cfg.dry_run and letter_probabilities_available(),
                   triage_from=p.triage_note, remote=name,
                   shards=[{"shard": k, "rows": list(r)} for k, r in enumerate(ranges)])
    if cfg.dry_run:
        summary["letter_counts"] = {}
    atomic_write_json(out / SUMMARY, summary)
    from rich.console import Console

    from ..prediction.files import report

    report(summary, out, p.settings[0], Console(stderr=True))
    return out


# ============================================================================ staging
def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _slim_copy(src: Path, dst: Path) -> Path:
    """``src`` without any ``checkpoints/`` folder (hard links where the file system allows)."""
    for path in sorted(Path(src).rglob("*")):
        rel = path.relative_to(src)
        if "checkpoints" in rel.parts or not path.is_file():
            continue
        _link_or_copy(path, dst / rel)
    return dst


def _stage_model(cfg: PredictConfig, p, out: Path, rc: RemoteConfig, base_model, base_local) -> dict[str, str]:
    """Links (path as given -> uploaded key) for the student and, if local, its base model."""
    links: dict[str, str] = {}
    if p.kind == "export":
        links[str(cfg.model)] = upload(boundary.volume(rc.models_volume), "models", Path(cfg.model))
    else:
        run = Path(cfg.adapter_path)
        stage = out / STAGE_DIR / "model"
        shutil.rmtree(stage, ignore_errors=True)
        slim = _slim_copy(run, stage / run.resolve().name)
        links[str(cfg.adapter_path)] = upload(boundary.volume(rc.datasets_volume), "datasets", slim)
    if base_local is not None:  # under the recorded value: the container finds it there (core/paths.py)
        key = p.settings[0].get("recorded_base_model") or base_model
        links[str(key)] = upload(boundary.volume(rc.models_volume), "models", base_local)
    return links


def _stage_inputs(p, out: Path, ranges, todo: set[int]):
    """Write each todo shard's rows (and link its images) under .remote/, upload it; yields
    (shard, range). One pass over the input, one chunk in memory at a time."""
    import pyarrow.parquet as pq

    from ..core.task import ID_COLUMNS, VIEWS
    from ..prediction.segments import image_name

    writers: dict[int, pq.ParquetWriter] = {}
    stage = out / STAGE_DIR
    try:
        for start, raw in p.source.raw_tables(p.cfg.chunk_size):
            k = next(i for i, (a, b) in enumerate(ranges) if a <= start < b)
            if k not in todo:
                continue
            folder = stage / _shard_name(k)
            if k not in writers:
                shutil.rmtree(folder, ignore_errors=True)
                (folder / "images").mkdir(parents=True)
                (folder / "images" / ".keep").write_text("")
                writers[k] = pq.ParquetWriter(folder / "segments.parquet", raw.schema)
            writers[k].write_table(raw)
            if p.source.images_dir is not None:
                for pid, cid in zip(*(raw.column(c).to_pylist() for c in ID_COLUMNS), strict=True):
                    try:  # as the reader names them: the ids as exact integers
                        pid, cid = int(str(pid).strip()), int(str(cid).strip())
                    except ValueError:
                        continue  # a bad row: the shard reports it
                    for view in VIEWS:
                        name = image_name(pid, cid, view)
                        if (p.source.images_dir / name).is_file():
                            _link_or_copy(p.source.images_dir / name, folder / "images" / name)
    finally:
        for w in writers.values():
            w.close()
    for k in sorted(todo):
        yield k, ranges[k]


def _shard_kwargs(cfg: PredictConfig, p, out: Path, rc: RemoteConfig, name: str, k: int, rng, links) -> dict:
    shard = _shard_name(k)
    key = upload(boundary.volume(rc.datasets_volume), "datasets", out / STAGE_DIR / shard)
    settings = cfg.model_dump(mode="json")
    settings.update(input=f"{shard}/segments.parquet", images_dir=f"{shard}/images" if p.source.images_dir else None,
                    row_offset=rng[0], shards=None, csv=False, force=False, threshold=None, triage_from=None,
                    config_name=None, dataset_split=None, progress=False)
    return dict(settings=settings, links={**links, shard: key}, name=name, shard=k, runs_volume=rc.runs_volume,
                models_volume=rc.models_volume, gpu=resources(rc).eval_gpu)


# ============================================================================ calls
def _read_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(out: Path, name: str, ranges, todo: list[int], fan: Fanout) -> None:
    from ..core.data import atomic_write_json

    old = {r["shard"]: r for r in _read_state(out).get("records", [])}
    for k, rec in zip(todo, fan.records(), strict=True):
        old[k] = {**rec, "shard": k}
    atomic_write_json(out / STATE, {"name": name, "ranges": [list(r) for r in ranges],
                                    "records": [old[k] for k in sorted(old)]})


def _fanout(fn, todo: list[int], kwargs: dict, state: dict) -> Fanout:
    """One call per todo shard; a call still running from an earlier attempt is re-attached."""
    import uuid

    earlier = {r["shard"]: r for r in state.get("records", [])} if state.get("records") else {}
    records = []
    for k in todo:
        rec = earlier.get(k)
        if rec and rec.get("status") == RUNNING and rec.get("call_id"):
            records.append({**rec, "kwargs": rec["kwargs"]})
        else:
            records.append({"kwargs": {**kwargs[k], "call_token": uuid.uuid4().hex}, "status": QUEUED})
    fan = Fanout.resume(fn, records)
    return fan.start()


def _wait(fan: Fanout, todo: list[int], out: Path, name: str, ranges) -> None:
    def changed(h):
        k = todo[h.index]
        if h.status == FINISHED:
            r = h.result or {}
            say(f"shard {k}: finished ({r.get('predicted', '?')} segments, {r.get('skipped', '?')} skipped)")
        elif h.status != RUNNING:
            say(f"shard {k}: {h.status}" + (f" ({h.reason}: {h.error})" if h.error else ""))
        _save_state(out, name, ranges, todo, fan)

    fan.wait(WAIT_SECONDS, on_change=changed)


def _failure(fan: Fanout | None, todo: list[int], k: int) -> str:
    if fan is not None and k in todo:
        h = fan.handles[todo.index(k)]
        if h.status in (FAILED,) or h.error:
            return f"shard {k}: {h.reason or h.status}: {h.error}"
    return f"shard {k}: incomplete"

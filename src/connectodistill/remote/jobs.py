"""Runs already on Modal: where each stands, and ``fetch`` (list, follow, cancel, download).

A run's status comes from the container's outcome file on the runs volume, else Modal's answer
for the recorded call id, else what its folder shows; so it is known after a closed laptop and
after Modal has dropped the call's result.
"""

from __future__ import annotations

import sys
import threading
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from ..core.config import RemoteConfig
from ..core.errors import UserError
from . import boundary
from .calls import (
    CANCELLED,
    EXPIRED,
    FAILED,
    FINISHED,
    RUNNING,
    CallState,
    modal_errors,
    poll_call,
    wait_call,
)
from .container import CALLS_DIR, EVAL_DIR, EVAL_SUMMARY, RUN_CONFIG, TRAIN_DIR, first_line
from .volumes import download, list_folders, listdir, read_json, say, write_json

STUB = "modal_call.json"  # in the local run / result folder while (and after) it runs on Modal
WAIT_SLICE_SECONDS = 60.0  # FunctionCall.get(timeout=...) per slice while waiting
DONE_MARKER = {TRAIN_DIR: RUN_CONFIG, EVAL_DIR: EVAL_SUMMARY}


def failure_line(name: str, kind: str, state: CallState, rc: RemoteConfig) -> str:
    """One line for a failed call, with what to do about it."""
    error, reason = state.error or state.status, state.reason
    if reason == "bad input":
        return error  # the same line as a local run
    hints = {
        "out of memory": "try --batch-size 1, a smaller --max-pixels, --load-in-4bit or a larger --gpu",
        "gated": "accept the model's terms on huggingface.co with the account whose token is in the Modal "
                 f"secret {rc.hf_secret} (or export HF_TOKEN here)",
        "hub auth": f"check the HF_TOKEN in the Modal secret {rc.hf_secret} (or export HF_TOKEN here)",
        "hub not found": "check the model id; a private repo needs HF_TOKEN",
        "timeout": (f"continue it with `connectodistill train --remote --resume --run-dir {name}` "
                    "(and a larger --timeout)") if kind == TRAIN_DIR else "raise --timeout",
        "missing module": "the image lacks a package: refresh the lock (docs/modal.md)",
        "no gpu": "rerun it (a fresh container); `connectodistill remote check --gpu GPU` checks the image's CUDA",
    }
    what = state.status if state.status in (CANCELLED, EXPIRED) else "failed"
    line = f"{name} {what} on Modal: {error}"
    return f"{line}; {hints[reason]}" if reason in hints else line



def run_status(runs, kind: str, name: str, folder: dict | None, records: set[str] | None = None) -> dict:
    """Where one run stands: the container's outcome, else Modal's answer for the call id, else
    what its folder shows. Returns name, kind, status, detail, modified, call_id, local_dir.
    ``records``: the file names under ``calls/<kind>/`` if already listed (saves requests)."""

    def read(file: str) -> dict | None:
        if records is not None and file not in records:
            return None
        return read_json(runs, f"{CALLS_DIR}/{kind}/{file}")

    rec, outcome = read(f"{name}.json"), read(f"{name}.outcome.json")
    row = {"name": name, "kind": kind, "status": "stopped", "detail": "",
           "modified": folder["modified"] if folder else "", "call_id": (rec or {}).get("call_id"),
           "local_dir": (rec or {}).get("local_dir"), "token": (rec or {}).get("token")}
    if rec is not None and not row["modified"]:
        row["modified"] = _local_time(rec.get("started"))
    if outcome is not None and (rec is None or outcome.get("token") == rec.get("token")):
        row["status"], row["detail"] = outcome["status"], outcome.get("error") or ""
        row["reason"] = outcome.get("reason")
        return row
    if rec is not None and rec.get("call_id"):
        state = poll_call(boundary.call_from_id(rec["call_id"]))
        if state.status != EXPIRED:
            row.update(status=state.status, reason=state.reason, detail=state.error or (
                f"started {_local_time(rec.get('started'))}" if state.status == RUNNING else ""))
            return row
    if folder is not None and folder["finished"]:
        row["status"] = FINISHED
    else:  # no call running (or none known), no final output
        row["status"] = "stopped"
        row["detail"] = (f"continue with `train --remote --resume --run-dir {name}`" if kind == TRAIN_DIR
                         else "no output on the volume")
    return row


def list_runs(volume) -> list[dict]:
    """Every run and eval on the runs volume with its status (oldest first): name, kind, status
    (running, finished, failed, cancelled, stopped), detail (the error line), modified, call_id."""
    folders = {(r["kind"], r["name"]): r for r in list_folders(volume)}
    keys, records = set(folders), {}
    for kind in (TRAIN_DIR, EVAL_DIR):
        records[kind] = {PurePosixPath(e.path).name for e in listdir(volume, f"{CALLS_DIR}/{kind}")}
        keys |= {(kind, f[: -len(".json")]) for f in records[kind]
                 if f.endswith(".json") and not f.endswith(".outcome.json")}
    rows = [run_status(volume, kind, name, folders.get((kind, name)), records[kind]) for kind, name in keys]
    return sorted(rows, key=lambda r: (r["modified"], r["name"]))


def fetch(name: str | None, output_dir: Path | None, remote_cfg: RemoteConfig, *,
          follow: bool = False, cancel: bool = False) -> Path | list[dict] | dict:
    """Without a name: list every run with its status, and download the finished ones started
    from this machine that are not here yet. With a name: download it (``output_dir/name``, or
    where it was started), ``follow`` it while it runs, or ``cancel`` it."""
    with modal_errors(remote_cfg):
        runs = boundary.volume(remote_cfg.runs_volume, create=False)
        if name is None:
            rows = list_runs(runs)
            _print_runs(rows, remote_cfg.runs_volume)
            for row in rows:
                if row["status"] == FINISHED and _waiting_here(row):
                    download(runs, f"{row['kind']}/{row['name']}", Path(row["local_dir"]))
            return rows
        name = PurePosixPath(name).name
        row = _find(runs, name, remote_cfg)
        if cancel:
            return _cancel(runs, row)
        if row["status"] == RUNNING and follow:
            state = _follow(row)
            row = {**row, "status": state.status, "detail": state.error or "", "reason": state.reason}
        if row["status"] == RUNNING:
            say(f"{name} is still running on Modal ({row['detail']}): "
                f"`connectodistill fetch {name} --follow` waits for it and downloads it")
            return row
        if row["status"] in (FAILED, CANCELLED):
            line = failure_line(name, row["kind"], CallState(
                row["status"], reason=row.get("reason"), error=row["detail"]), remote_cfg)
            raise UserError(line if line.startswith(name) else f"{name} failed on Modal: {line}")
        if row["status"] != FINISHED and not _done_on_volume(runs, row):  # stopped
            raise UserError(f"{name} did not finish ({row['detail'] or row['status']})")
        where = Path(output_dir) / name if output_dir is not None else Path(row.get("local_dir") or name)
        return download(runs, f"{row['kind']}/{name}", where)


def _find(runs, name: str, rc: RemoteConfig) -> dict:
    folders = {(r["kind"], r["name"]): r for r in list_folders(runs)}
    for kind in (TRAIN_DIR, EVAL_DIR):
        if (kind, name) in folders or listdir(runs, f"{CALLS_DIR}/{kind}/{name}.json"):
            return run_status(runs, kind, name, folders.get((kind, name)))
    raise UserError(f"nothing named {name} on the runs volume {rc.runs_volume}; "
                    "`connectodistill fetch` lists what is there")


def _done_on_volume(runs, row: dict) -> bool:
    return bool(listdir(runs, f"{row['kind']}/{row['name']}/{DONE_MARKER[row['kind']]}"))


def _waiting_here(row: dict) -> bool:
    """Started from this machine (its stub is here) and not downloaded yet."""
    local = Path(row["local_dir"]) if row.get("local_dir") else None
    return bool(local and (local / STUB).is_file() and not (local / DONE_MARKER[row["kind"]]).is_file())


def _cancel(runs, row: dict) -> dict:
    name = row["name"]
    if row["status"] != RUNNING:
        say(f"{name} is {row['status']}: nothing to cancel")
        return row
    boundary.call_from_id(row["call_id"]).cancel(terminate_containers=True)
    write_json(runs, f"{CALLS_DIR}/{row['kind']}/{name}.outcome.json",
               {"name": name, "status": CANCELLED, "reason": "cancelled", "error": "cancelled with fetch --cancel",
                "token": row.get("token"), "ended": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    after = f"; its checkpoints (if any) stay: continue with `connectodistill train --remote --resume --run-dir {name}`"
    say(f"cancelled {name}" + (after if row["kind"] == TRAIN_DIR else ""))
    return {**row, "status": CANCELLED, "detail": "cancelled with fetch --cancel"}


def _follow(row: dict) -> CallState:
    """Stream a running call's logs (the last lines, then new ones) until it ends."""
    call = boundary.call_from_id(row["call_id"])
    stop = threading.Event()

    def logs():
        try:
            for line in boundary.log_lines(call):
                if stop.is_set():
                    return
                sys.stderr.write(line if line.endswith(("\n", "\r")) else line + "\n")
                sys.stderr.flush()
        except Exception as e:  # noqa: BLE001 - logs are best effort; the wait decides
            say(f"(log stream ended: {first_line(e)})")

    say(f"following {row['name']} (call {row['call_id']}); Ctrl-C stops following, not the job")
    thread = threading.Thread(target=logs, daemon=True)
    thread.start()
    try:
        return wait_call(call, WAIT_SLICE_SECONDS)
    finally:
        stop.set()
        thread.join(timeout=2)


def _print_runs(rows: list[dict], volume_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Modal volume {volume_name}",
                  caption="stopped = no call running and no final output: continue a run with "
                  "`train --remote --resume --run-dir NAME`")
    for col in ("name", "kind", "status", "detail", "modified"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["status"], r["detail"], r["modified"])
    Console().print(table)


def _local_time(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone().replace(tzinfo=None).isoformat(" ", "seconds")

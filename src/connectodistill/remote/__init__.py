"""`--remote`: the same `train()` / `evaluate()` calls, run on Modal GPUs.

What this package adds to the local commands, and nothing else:

- one Modal app (:func:`declare`, in ``app.py``): a pinned image, two GPU functions calling
  ``training.train`` / ``evaluation.evaluate`` and two CPU ones (the student's weights into the
  models volume before any GPU starts; ``remote check``), with cost guards: 4 h / 1 h timeouts,
  fresh containers on retry, deterministic failures never retried, eval on one GPU;
- local inputs uploaded once, content-addressed, to a volume; inside the container each one is
  reachable at the very path the command line gave (``container.py``);
- every call spawned in a detached app, its id recorded on the runs volume and in the local
  folder, so a closed laptop loses nothing (``dispatch.py``); ``fetch`` lists, follows, cancels
  and downloads (``jobs.py``), on top of a fan-out primitive (:func:`spawn_all`, ``calls.py``);
- run folders on a runs volume, committed at every checkpoint, so a preempted or retried call
  continues from the last checkpoint instead of starting over.

Every request to Modal goes through ``boundary.py`` (the tests replace it). ``modal`` is
imported inside functions only: ``connectodistill --help`` and every local command work
without it, and declaring the app touches no network.
"""

from .app import (
    EVAL_TIMEOUT,
    GPUS,
    MAX_TIMEOUT,
    TRAIN_RETRIES,
    TRAIN_TIMEOUT,
    Remote,
    declare,
    gpu_string,
    image_packages,
    parse_gpu,
    read_lock,
    resources,
    runtime_requirements,
)
from .calls import CallHandle, CallState, Fanout, poll_call, spawn_all, wait_call
from .container import MOUNTS, ROOT_ENV, evaluate_in_container, train_in_container, volumes_root
from .dispatch import evaluate_remote, remote_check, train_remote
from .jobs import fetch, list_runs

__all__ = [
    "EVAL_TIMEOUT", "GPUS", "MAX_TIMEOUT", "MOUNTS", "ROOT_ENV", "TRAIN_RETRIES", "TRAIN_TIMEOUT",
    "CallHandle", "CallState", "Fanout", "Remote", "declare", "evaluate_in_container",
    "evaluate_remote", "fetch", "gpu_string", "image_packages", "list_runs", "parse_gpu", "poll_call",
    "read_lock", "remote_check", "resources", "runtime_requirements", "spawn_all",
    "train_in_container", "train_remote", "volumes_root", "wait_call",
]

"""`connectodistill remote check`: its container body run with ``.local()`` on local-folder
volumes, and the command around it with the network replaced."""

from __future__ import annotations

import pytest

from connectodistill import remote
from connectodistill.core.errors import UserError
from connectodistill.remote import container
from remote_fakes import DEPRECATIONS_ARE_ERRORS, LOCAL_WARNING, RC, Offline

pytestmark = [pytest.mark.filterwarnings(LOCAL_WARNING), pytest.mark.filterwarnings(DEPRECATIONS_ARE_ERRORS)]
VOLUMES = {"models": "t-models", "datasets": "t-datasets", "runs": "t-runs"}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    off = Offline(tmp_path / "volumes").install(monkeypatch)
    off.commits = []
    monkeypatch.setattr(container, "commit_volume", off.commits.append)
    # The image's versions are the lock's (bitsandbytes, the gpu extra, is not installed here).
    monkeypatch.setattr(container, "image_versions", lambda: {
        "torch": remote.read_lock().pins["torch"], "huggingface_hub": remote.read_lock().pins["huggingface-hub"],
        "modal": "1.6.4"})
    return off


def by_name(result: dict) -> dict:
    return {c["check"]: c for c in result["checks"]}


def test_the_check_body_writes_commits_and_reads_back(offline):
    check = remote.declare(RC, environ={}).check
    first = check.local(step="write", token="tok123", volumes=VOLUMES)
    checks = by_name(first)
    assert all(c["ok"] for c in first["checks"]), first["checks"]
    # The CLI runs from a temporary folder with the environment the multi-GPU children get.
    assert "python -m connectodistill --help from a temporary folder" in checks
    assert checks["torch imports; CUDA"]["detail"] == "no GPU in this container"
    assert {f"write and commit {m}" for m in VOLUMES} <= set(checks)
    for mount in VOLUMES:
        assert (offline.root / mount / container.CHECK_DIR / "tok123.txt").read_text() == "tok123"
    assert offline.commits == ["t-models", "t-datasets", "t-runs"]
    assert first["python"].startswith("3.") and "torch" in first["versions"]

    second = check.local(step="read", token="tok123", volumes=VOLUMES)
    assert [c["ok"] for c in second["checks"]] == [True] * 3
    assert not list(offline.root.rglob("tok123.txt"))  # cleaned up, and committed
    assert offline.commits[3:] == ["t-models", "t-datasets", "t-runs"]
    missed = check.local(step="read", token="other", volumes=VOLUMES)
    assert [c["ok"] for c in missed["checks"]] == [False] * 3


def test_the_check_reports_a_missing_gpu_and_a_gated_model(offline, monkeypatch):
    import huggingface_hub

    from test_remote import hub_error

    def auth_check(repo_id, **kw):
        raise hub_error("GatedRepoError", f"Access to model {repo_id} is restricted")

    monkeypatch.setattr(huggingface_hub, "auth_check", auth_check)
    result = container.check_in_container("write", "t", VOLUMES, model="org/gated", expect_gpu=True)
    checks = by_name(result)
    assert not checks["torch imports; CUDA"]["ok"]
    assert not checks["Hugging Face access to org/gated"]["ok"]
    assert checks["Hugging Face access to org/gated"]["detail"].startswith("gated: Access to model org/gated")


def test_remote_check_runs_two_calls_in_an_attached_app(offline, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "auth_check", lambda repo_id, **kw: None)
    report = remote.remote_check(RC, model="Qwen/Qwen3-VL-8B-Instruct")
    assert offline.runs == [False]  # a check should stop with this terminal
    assert [c["step"] for c in offline.blocking] == ["write", "read"]
    assert offline.blocking[0]["token"] == offline.blocking[1]["token"]
    assert offline.calls == []  # nothing spawned
    assert all(c["ok"] for c in report["checks"]) and "image versions match the lock" in by_name(report)
    assert by_name(report)["Hugging Face access to Qwen/Qwen3-VL-8B-Instruct"]["ok"]
    out = capsys.readouterr().out
    assert "connectodistill remote check" in out and f"torch {remote.read_lock().pins['torch']}" in out


def test_remote_check_fails_with_one_line_naming_the_failed_checks(offline, monkeypatch):
    monkeypatch.setattr(container, "image_versions", lambda: {"torch": "0.0.1"})
    with pytest.raises(UserError) as e:
        remote.remote_check(RC)
    assert str(e.value) == "remote check failed: image versions match the lock"


def test_the_cli_runs_the_check(offline, monkeypatch):
    import huggingface_hub
    from typer.testing import CliRunner

    from connectodistill.cli import app

    monkeypatch.setattr(huggingface_hub, "auth_check", lambda repo_id, **kw: None)
    r = CliRunner().invoke(app, ["remote", "check"])
    assert r.exit_code == 0, r.output
    assert "connectodistill remote check" in r.output and "image: Python" in r.output
    monkeypatch.setattr(container, "image_versions", lambda: {"torch": "0.0.1"})
    r = CliRunner().invoke(app, ["remote", "check"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith("error: remote check failed")

"""Access control of a real service: bearer tokens and roles, console sessions, refusing to start
open on a non-loopback address, tokens never in the logs, TLS."""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from orchestrator.api.auth import hash_token_line
from orchestrator.bootstrap import Orchestrator
from tests.conftest import REPO, cli_env, run_cli
from tests.test_api_harness import assert_problem, running_service

SUBMIT = {"flow": "HibernateVm", "params": {"vm_id": "vm-0001"}}
CONSOLE = {"X-Orchestrator-Console": "1"}


def hash_with_cli(token: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve", "--hash-token", *args],
        input=token + "\n", capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_tokens_roles_sessions_and_no_token_in_the_logs(store_url: str, agent_state: Path, tmp_path: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(vms=3, disks=1)
    viewer, operator, from_env = (f"{kind}-{secrets.token_hex(16)}" for kind in ("ro", "op", "env"))
    viewer_line = hash_with_cli(viewer, "--role", "read-only", "--name", "viewer")
    assert viewer_line.startswith("sha256:") and viewer_line.endswith(" read-only viewer") and viewer not in viewer_line
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may do what\n{viewer_line}\n{hash_token_line(operator, 'operator', 'ops')}\n")
    env = {"ORCHESTRATOR_API_TOKENS": hash_token_line(from_env, "operator", "robot")}
    with running_service(tmp_path, store_url, agent_state, "--tokens", str(tokens), env=env) as service:
        with service.client() as anyone:
            refused = assert_problem(anyone.get("/api/v1/commands"), 401, "bearer token")
            assert refused["type"].startswith("urn:orchestrator:problem:")
            assert anyone.get("/api/v1/commands").headers["www-authenticate"].startswith("Bearer")
            assert_problem(anyone.get("/api/v1/commands", headers={"Authorization": "Basic abc"}), 401)
            assert_problem(anyone.get("/metrics"), 401)
            assert anyone.get("/healthz").status_code == 200
            assert anyone.get("/openapi.json").status_code == 200
        with service.client(f"x{operator}") as unknown:
            assert_problem(unknown.get("/api/v1/commands"), 401, "not known")
        with service.client(viewer) as reader:
            assert reader.get("/api/v1/commands").status_code == 200
            assert reader.get("/metrics").status_code == 200
            assert_problem(reader.post("/api/v1/commands", json=SUBMIT), 403, "read-only")
            assert_problem(reader.post("/api/v1/command-batches", json={"commands": [SUBMIT]}), 403)
        with service.client(operator) as ops:
            accepted = ops.post("/api/v1/commands", json=SUBMIT)
            assert accepted.status_code == 201, accepted.text
            ident = accepted.json()["command_id"]
        with service.client(from_env) as robot:
            assert robot.post(f"/api/v1/commands/{ident}/cancel", json={}).status_code == 200
        with service.client(viewer) as reader:
            assert_problem(reader.post(f"/api/v1/commands/{ident}/cancel", json={}), 403)

        with service.client(follow_redirects=False) as browser:
            page = browser.get("/", headers={"Accept": "text/html"})
            assert page.status_code == 303 and page.headers["location"] == "/login?next=%2F"
            assert browser.get("/login").status_code == 200
            assert_problem(browser.post("/console/session", json={"token": "wrong-token-wrong"}), 401)
            signed_in = browser.post("/console/session", json={"token": viewer})
            assert signed_in.status_code == 200 and signed_in.json()["role"] == "read-only"
            cookie = signed_in.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie and viewer not in cookie
            assert browser.get("/", headers={"Accept": "text/html"}).status_code == 200
            assert browser.get("/api/v1/commands").status_code == 200  # the console reads with its session
            assert_problem(browser.post("/api/v1/commands", json=SUBMIT, headers=CONSOLE), 403, "read-only")
            assert browser.delete("/console/session", headers=CONSOLE).status_code == 204
            browser.cookies.clear()
            assert browser.post("/console/session", json={"token": operator}).status_code == 200
            assert_problem(browser.post("/api/v1/commands", json=SUBMIT), 403, "X-Orchestrator-Console")
            other = {"flow": "HibernateVm", "params": {"vm_id": "vm-0002"}}
            assert browser.post("/api/v1/commands", json=other, headers=CONSOLE).status_code == 201
        assert service.stop() == 0
    log = service.log() + service.stdout.read_text()
    for token in (viewer, operator, from_env, f"x{operator}", "wrong-token-wrong"):
        assert token not in log
    assert "refused GET /api/v1/commands from 127.0.0.1: this API needs a bearer token" in log
    assert "refused POST /api/v1/commands from 127.0.0.1: token 'viewer' is read-only" in log


def test_refuses_to_start_open_on_a_non_loopback_address(tmp_path: Path) -> None:
    store = tmp_path / "never.db"
    for listen in ("0.0.0.0:0", "[::]:0", "example.org:8080"):
        proc = run_cli("--store", f"sqlite:///{store}", "serve", "--listen", listen, timeout=60)
        assert proc.returncode == 4, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: refusing to listen on {listen} without tokens")
    assert not store.exists()  # refused before the store was opened
    bad = tmp_path / "tokens"
    bad.write_text("sha256:not-hex-at-all-and-maybe-a-pasted-secret operator\n")
    proc = run_cli("--store", f"sqlite:///{store}", "serve", "--tokens", str(bad), timeout=60)
    assert proc.returncode == 4 and "entry 1: not 'sha256:" in proc.stderr
    assert "pasted-secret" not in proc.stderr
    proc = run_cli("--store", f"sqlite:///{store}", "serve", "--tls-cert", str(bad), timeout=60)
    assert proc.returncode == 4 and "needs both --tls-cert and --tls-key" in proc.stderr
    short = subprocess.run(
        [sys.executable, "-m", "orchestrator.api", "hash-token"], input="short\n", capture_output=True, text=True,
        env=cli_env(), cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert short.returncode == 4 and "at least 16 characters" in short.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_through_uvicorn(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    token = secrets.token_hex(16)
    env = {"ORCHESTRATOR_API_TOKENS": hash_token_line(token, "operator")}
    store = f"sqlite:///{tmp_path / 'store.db'}"
    args = ("--tls-cert", str(cert), "--tls-key", str(key))
    with running_service(tmp_path, store, tmp_path / "agent.db", *args, env=env) as service:
        assert service.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=service.url, verify=trusted, timeout=15) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            session = client.post("/console/session", json={"token": token})
            assert "secure" in session.headers["set-cookie"].lower()
        with pytest.raises(httpx.HTTPError):
            httpx.get(service.url.replace("https://", "http://") + "healthz", timeout=5)

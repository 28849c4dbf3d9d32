"""A real `prefect server start` for tests: 127.0.0.1 on a free port, its own PREFECT_HOME, stopped by
PID with bounded waits. Also a worker, and small helpers over the server's REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

PREFECT = Path(sys.executable).parent / "prefect"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, port: int, project: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith(("PREFECT_", "MLFLOW_"))]:
        del env[key]  # nothing from a test harness or the user's profile leaks in
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        PYTHONPATH=str(project),
        MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
        OMP_NUM_THREADS="1",
    )
    return env


def stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group we started (the server's uvicorn, the worker's flow runs), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def api(env: dict[str, str], path: str, body: dict | None = None, method: str | None = None, attempts: int = 1):
    """A call to the server's REST API (the tests only read: /filter endpoints are POSTs that read)."""
    url = env["PREFECT_API_URL"] + path
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(attempts):
        req = urllib.request.Request(url, data=data, method=method or ("POST" if body is not None else "GET"),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except TimeoutError:  # a stalled SQLite-backed server (see wait_for_flow_run): ask again
            if attempt == attempts - 1:
                raise


@contextmanager
def prefect_server(home: Path, project: Path, log: Path, startup_timeout: float = 240.0):
    """Yields the environment that points the CLI, workers and clients at the server."""
    port = free_port()
    env = server_env(home, port, project)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                if api(env, "/health") is True:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield env
    finally:
        stop(proc)


@contextmanager
def worker(env: dict[str, str], pool: str, cwd: Path, log: Path):
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(PREFECT), "worker", "start", "--pool", pool], env=env, cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def cli(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> str:
    done = subprocess.run([str(PREFECT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for_flow_run(env: dict[str, str], run_id: str, timeout: float, worker_log: Path | None = None) -> dict:
    deadline = time.monotonic() + timeout
    run = {"state_type": "unknown (the server never answered)"}
    while time.monotonic() < deadline:
        try:
            run = api(env, f"/flow_runs/{run_id}")
        except OSError:
            # A SQLite-backed server on a busy machine can stall for a minute on "database is locked"
            # (PrefectHQ/prefect#23051) and then recover: keep polling until the deadline.
            time.sleep(3)
            continue
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(3)
    tail = worker_log.read_text()[-4000:] if worker_log and worker_log.exists() else ""
    raise TimeoutError(f"flow run {run_id} not finished after {timeout:.0f} s: {run['state_type']}\n{tail}")

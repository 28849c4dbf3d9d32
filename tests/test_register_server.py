"""Server mode: register, promote, history and load against a real `mlflow server` on 127.0.0.1,
through a proxy that fails every sixth request with a 503 (transient errors are retried); then
the server is stopped and the same calls fail with a clear message, registering nothing."""

from __future__ import annotations

import contextlib
import http.client
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import numpy as np
import pytest

from registry_fixtures import chdir, free_port, make_params, register_arch, service, shared_state
from tasks import tracking
from tasks.errors import UserError
from tasks.readers import load_prepared
from tasks.promote import alias_history, promote

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailers", "upgrade", "proxy-authorization"}


@contextlib.contextmanager
def flaky_proxy(upstream_port: int, every: int = 4, refuse: str | None = None):
    """An HTTP proxy to 127.0.0.1:`upstream_port` that answers 503 to every `every`-th request
    (0: none), and to every request whose path contains `refuse`."""
    counts = {"requests": 0, "503": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _relay(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            with lock:
                counts["requests"] += 1
                fail = (every and counts["requests"] % every == 0) or (refuse is not None and refuse in self.path)
                counts["503"] += fail
            if fail:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            headers["Host"] = f"127.0.0.1:{upstream_port}"
            conn.request(self.command, self.path, body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            self.send_response(reply.status)
            for k, v in reply.getheaders():
                if k.lower() not in HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], counts
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_server_mode_retries_and_dead_server(tmp_path_factory):
    state = shared_state(tmp_path_factory, "digits-server")
    folder = state.root / "server"
    folder.mkdir()
    port = free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    images, labels = load_prepared(state.layout.prepared).split("val")
    with service(cmd, f"http://127.0.0.1:{port}/health", folder, env, timeout=240):
        with flaky_proxy(port, every=6) as (proxy_port, counts):
            params = make_params(state.root, "register.model_name=digits-server", "mlflow.experiment=server",
                                 f"mlflow.tracking_uri=http://127.0.0.1:{proxy_port}", "mlflow.http_retries=4")
            with chdir(state.root):
                version = register_arch(state, "linear", params=params)["version"]
                result = promote(params, state.layout)
                history = alias_history(params, "digits-server")
            assert result["moved"] and result["staging"] == version
            assert [e["action"] for e in history] == ["move"]
            mlflow.set_tracking_uri(f"http://127.0.0.1:{proxy_port}")
            model = mlflow.pyfunc.load_model("models:/digits-server@staging")
            predicted = model.predict(np.ascontiguousarray(images))["label"].to_numpy()
            assert np.mean(predicted == labels) > 0.85
            assert counts["503"] >= 3, counts  # transient errors happened, and were retried
        # the server fails for good while the new version gets its alias: the version is removed again
        with flaky_proxy(port, every=0, refuse="registered-models/alias") as (proxy_port, counts):
            broken = make_params(state.root, "register.model_name=digits-server", "mlflow.experiment=server",
                                 f"mlflow.tracking_uri=http://127.0.0.1:{proxy_port}", "mlflow.http_retries=1")
            with chdir(state.root), pytest.raises(UserError, match="failed while registering"):
                register_arch(state, "linear", params=broken, vote="hard")  # another model: a new version
            assert counts["503"] >= 2  # the alias call, retried
        # the registry on the server holds exactly that one version
        direct = make_params(state.root, "register.model_name=digits-server",
                             f"mlflow.tracking_uri=http://127.0.0.1:{port}")
        before = tracking.client(direct).search_model_versions("name='digits-server'")
        assert [str(v.version) for v in before] == [version]
    # the server is gone: a clear error, quickly, and nothing registered
    dead = make_params(state.root, "register.model_name=digits-server", "mlflow.http_retries=1",
                       f"mlflow.tracking_uri=http://127.0.0.1:{port}")
    with chdir(state.root):
        with pytest.raises(UserError, match=rf"MLflow server at http://127.0.0.1:{port} is not reachable"):
            register_arch(state, "linear", params=dead)
        with pytest.raises(UserError, match="not reachable"):
            promote(dead, state.layout)
    store = make_params(state.root, f"mlflow.tracking_uri=sqlite:///{folder / 'server.db'}")  # the server's own db
    after = tracking.client(store).search_model_versions("name='digits-server'")
    assert [str(v.version) for v in after] == [version]

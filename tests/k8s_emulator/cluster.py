"""`EmulatedCluster`: the store, API server, controllers and kubelet wired together."""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .api import Api
from .auth import Authenticator, Identity
from .certs import make_certificates
from .controllers import Controllers
from .kubelet import Image, Kubelet
from .server import ApiServer, Application, Hold
from .store import RESOURCES, Obj, Store


class EmulatedCluster:
    """One API server on 127.0.0.1:<free port> with its CA, users, controllers and kubelet."""

    namespace = "default"

    def __init__(self, workdir: Path, job_backoff_seconds: float = 0.2) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.job_backoff_seconds = job_backoff_seconds
        certs = make_certificates()
        self.ca_file = workdir / "ca.crt"
        self.ca_file.write_bytes(certs.ca_pem)
        cert_file, key_file = workdir / "apiserver.crt", workdir / "apiserver.key"
        cert_file.write_bytes(certs.server_cert_pem)
        key_file.write_bytes(certs.server_key_pem)
        key_file.chmod(0o600)

        self.store = Store()
        self.authn = Authenticator(self.store)
        self.images: dict[str, Image] = {}
        self.kubelet = Kubelet(
            root=workdir,
            base_env={},
            images=self.images,
            store_get=self.store.get,
            issue_token=lambda ns, sa, pod: self.authn.issue_service_account(ns, sa, pod),
            ca_pem=certs.ca_pem,
            on_exit=lambda pod, runtime: self.controllers.publish(pod, runtime),
        )
        self.ops = Api(
            self.store,
            lambda pod, grace: self.kubelet.terminate(pod["metadata"]["uid"], min(grace, 3.0)),
        )
        self.controllers = Controllers(
            self.store, self.ops, self.kubelet, lambda: self.job_backoff_seconds
        )
        self._app = Application(
            self.store, self.ops, self.authn, self.kubelet, lambda: f"127.0.0.1:{self.port}"
        )
        self._server = ApiServer(self._app, str(cert_file), str(key_file))
        self.port = self._server.port
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubelet.base_env.update(
            {
                # The test venv's bin first, so an image's entrypoint finds its console scripts.
                "PATH": os.pathsep.join(
                    [str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]
                ),
                "LANG": "C.UTF-8",
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(self.port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.port),
                "KUBERNETES_PORT": f"tcp://127.0.0.1:{self.port}",
            }
        )
        self._bootstrap()
        self.admin_token = self.authn.issue_admin()
        self.kubeconfig = workdir / "kubeconfig"
        self._write_kubeconfig()
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        self._server.start()
        self.controllers.start()

    def _bootstrap(self) -> None:
        for ns in ("default", "kube-system", "kube-public"):
            self.ops.create(RESOURCES["namespaces"], "", {"metadata": {"name": ns}})
            self.ops.create(RESOURCES["serviceaccounts"], ns, {"metadata": {"name": "default"}})

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "emulator",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(
                            self.ca_file.read_bytes()
                        ).decode(),
                    },
                }
            ],
            "users": [{"name": "emulator-admin", "user": {"token": self.admin_token}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {
                        "cluster": "emulator",
                        "user": "emulator-admin",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "emulator",
            "preferences": {},
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.kubeconfig.chmod(0o600)

    # --- the test-facing API (see CONTRACT.md) -------------------------------------------------

    def register_image(
        self,
        name: str,
        entrypoint: list[str],
        workdir: str | None = None,
        cmd: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """An image the kubelet can "pull": Docker's ENTRYPOINT, CMD, WORKDIR and ENV."""
        self.images[name] = Image(
            tuple(entrypoint), tuple(cmd or ()), workdir, tuple((env or {}).items())
        )

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        content_type: str | None = None,
        timeout: float = 10,
    ) -> tuple[int, Any]:
        """A raw request as admin, or with `token` ("" sends none); a JSON body is decoded."""
        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        request = urllib.request.Request(self.server + path, data=data, method=method)
        if token != "":
            request.add_header("Authorization", f"Bearer {token or self.admin_token}")
        if data is not None:
            default = "application/merge-patch+json" if method == "PATCH" else "application/json"
            request.add_header("Content-Type", content_type or default)
        try:
            with urllib.request.urlopen(request, context=self._ssl, timeout=timeout) as response:
                status, ctype, payload = (
                    response.status,
                    response.headers.get("Content-Type", ""),
                    response.read(),
                )
        except urllib.error.HTTPError as err:
            status, ctype, payload = err.code, err.headers.get("Content-Type", ""), err.read()
        if ctype == "application/json":
            return status, json.loads(payload)
        return status, payload.decode("utf-8", "replace")

    def objects(self, kind_plural: str, namespace: str | None = "default") -> list[Obj]:
        """What the store holds now (full objects, with apiVersion and kind)."""
        res = RESOURCES[kind_plural]
        return self.store.list(kind_plural, (namespace or "") if not res.namespaced else namespace)

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token for the account, as `kubectl create token` gives (valid while it exists)."""
        return self.authn.issue_service_account(namespace, name)

    def token_identity(self, token: str) -> Identity | None:
        return self.authn.authenticate(f"Bearer {token}")

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll `check` until it returns something truthy; fail with `what` at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.store.wait(0.05)

    def pod_processes(self) -> Iterable[int]:
        """The pids of the containers still running."""
        with self.kubelet.lock:
            runtimes = list(self.kubelet.runtimes.values())
        return [r.process.pid for r in runtimes if r.process is not None and r.exit_code is None]

    def hold(self, method: str, path_suffix: str, timeout: float = 30.0) -> Hold:
        """From now on, `method` requests whose path ends with `path_suffix` wait after
        arriving until `release()` (or `timeout`); `arrived` is set when one has."""
        hold = Hold(method, path_suffix, timeout)
        self._app.holds.append(hold)
        return hold

    def drop_log_streams(self) -> int:
        """End every `follow=true` log stream in progress, cleanly, while the containers go on
        running (what an apiserver or kubelet restart does); returns how many were ended."""
        return self._app.drop_log_streams()

    @property
    def errors(self) -> list[str]:
        """Unexpected exceptions in the server or the controllers (tests assert it is empty)."""
        return self._app.errors + self.controllers.errors

    def close(self) -> None:
        self.controllers.stop()
        self.kubelet.shutdown()
        self._server.stop()

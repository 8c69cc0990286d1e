"""The HTTPS front: routing, authentication, authorization, JSON and the log stream."""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
import ssl
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .api import Api
from .auth import Attributes, Authenticator, Identity, authorize, forbidden_message
from .kubelet import Kubelet, LogBuffer
from .store import (
    RESOURCES,
    ApiError,
    Obj,
    Resource,
    Store,
    bad_request,
    forbidden,
    now,
    resource_for,
)

KUBERNETES_VERSION = {"major": "1", "minor": "31"}

_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_SUBRESOURCES = {"pods": ("log", "status"), "jobs": ("status",)}


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("true", "1")


def _int(query: dict[str, list[str]], name: str) -> int | None:
    if name not in query:
        return None
    try:
        return int(query[name][-1])
    except ValueError as exc:
        raise bad_request(f"{name}: invalid integer {query[name][-1]!r}") from exc


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # joined at server_close
    block_on_close = True

    def __init__(self, app: Application, context: ssl.SSLContext) -> None:
        self.app = app
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-request, or a failed TLS handshake

    def close_connections(self) -> None:
        with self.connections_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 120  # an idle keep-alive connection's thread ends after this (close() cuts it)

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.request.do_handshake()  # here, in the request's thread, not in accept()
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows failures, not every request

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            query = parse_qs(urlsplit(self.path).query)
            dry_run = query.get("dryRun", [""])[-1]
            if dry_run not in ("", "All"):
                raise bad_request(f'Unsupported value: {dry_run!r}: supported values: "All"')
            self.server.app.api.begin_request(
                query.get("fieldValidation", [None])[-1], dry_run == "All"
            )
            self.server.app.handle(self, method, raw)
        except ApiError as exc:
            self.send_json(exc.code, exc.status())
        except (ConnectionError, ssl.SSLError, TimeoutError):
            # The client went away (e.g. Ctrl-C during `logs -f`): the end of the stream.
            self.close_connection = True
        except Exception:
            self.server.app.errors.append(traceback.format_exc())
            self.send_json(
                500, ApiError(500, "InternalError", traceback.format_exc(limit=3)).status()
            )

    def send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")  # exactly: lightkube compares it
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", "emulator")
        for warning in self.server.app.api.warnings():
            self.send_header("Warning", f"299 - {json.dumps(warning)}")
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Hold:
    """Requests of one method whose path ends with a suffix wait, once they have arrived,
    until the test releases them: a slow API server, at the moment a test chooses."""

    def __init__(self, method: str, path_suffix: str, timeout: float) -> None:
        self.method, self.path_suffix, self.timeout = method, path_suffix, timeout
        self.arrived = threading.Event()
        self._released = threading.Event()

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and urlsplit(path).path.endswith(self.path_suffix)

    def wait(self) -> None:
        self.arrived.set()
        self._released.wait(self.timeout)

    def release(self) -> None:
        self._released.set()


class Application:
    def __init__(
        self,
        store: Store,
        api: Api,
        authn: Authenticator,
        kubelet: Kubelet,
        server_address: Callable[[], str],
    ) -> None:
        self.store, self.api, self.authn, self.kubelet = store, api, authn, kubelet
        self._address = server_address
        self.errors: list[str] = []
        self._streams: set[tuple[threading.Event, LogBuffer]] = set()
        self._streams_lock = threading.Lock()
        self.holds: list[Hold] = []

    def drop_log_streams(self) -> int:
        """End every `follow=true` log response in progress (as an apiserver restart does)."""
        with self._streams_lock:
            streams = list(self._streams)
        for cut, log in streams:
            cut.set()
            log.poke()
        return len(streams)

    # --- routing ----------------------------------------------------------------------

    def handle(self, h: _Handler, method: str, raw: bytes) -> None:
        for hold in list(self.holds):
            if hold.matches(method, h.path):
                hold.wait()
        url = urlsplit(h.path)
        query = parse_qs(url.query, keep_blank_values=True)
        parts = [p for p in url.path.split("/") if p]
        if parts in (["healthz"], ["livez"], ["readyz"]):
            h.send_text(200, b"ok")
            return
        identity = self.authn.authenticate(h.headers.get("Authorization"))
        if identity is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if (
            not parts
            or parts == ["version"]
            or (parts[0] in ("api", "apis") and self._is_discovery(parts))
        ):
            if method != "GET":
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            h.send_json(200, self._discovery(parts))
            return
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")

        verb = _VERBS.get(method, method.lower())
        if method == "GET" and not name:
            verb = "watch" if _flag(query, "watch") else "list"
        elif method == "DELETE" and not name:
            verb = "deletecollection"
        attrs = Attributes(verb, group, plural, sub, name, namespace)
        res = resource_for(group, version, plural)
        if not authorize(self.store, identity, attrs):
            qualified = res.qualified if res else (f"{plural}.{group}" if group else plural)
            raise forbidden(res, name or None, forbidden_message(identity, attrs, qualified))
        if (
            res is None
            or (res.namespaced is False and namespace)
            or (sub and sub not in _SUBRESOURCES.get(plural, ()))
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if verb == "watch":
            raise ApiError(
                501, "NotImplemented", "the emulator does not support watch; poll instead"
            )
        if verb == "deletecollection" or (verb not in res.verbs and verb != "list" and not sub):
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        if res.namespaced and not namespace and verb != "list":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self._serve(h, method, res, namespace, name, sub, query, raw, identity)

    def _serve(
        self,
        h: _Handler,
        method: str,
        res: Resource,
        namespace: str,
        name: str,
        sub: str,
        query: dict[str, list[str]],
        raw: bytes,
        identity: Identity,
    ) -> None:
        if sub == "log":
            if method != "GET":
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            self._log(h, namespace, name, query)
            return
        if sub == "status" and method != "GET":
            raise ApiError(
                405, "MethodNotAllowed", "the emulator's status subresources are read-only"
            )
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise bad_request(
                    f"the body of the request could not be decoded as JSON: {exc}"
                ) from exc
        if method == "GET":
            if name:
                h.send_json(200, self.api.get(res, namespace, name))
            else:
                h.send_json(
                    200,
                    self.api.list(
                        res,
                        namespace or None,
                        query.get("labelSelector", [None])[-1],
                        query.get("fieldSelector", [None])[-1],
                    ),
                )
        elif method == "POST":
            if name:
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            h.send_json(201, self.api.create(res, namespace, body))
        elif method == "PUT":
            h.send_json(200, self.api.update(res, namespace, name, body))
        elif method == "PATCH":
            content_type = (h.headers.get("Content-Type") or "").split(";")[0].strip()
            h.send_json(200, self.api.patch(res, namespace, name, content_type, body))
        elif method == "DELETE":
            options: Obj = body if isinstance(body, dict) else {}
            policy = query.get("propagationPolicy", [options.get("propagationPolicy")])[-1]
            orphan = query.get("orphanDependents", [options.get("orphanDependents")])[-1]
            if policy is None and orphan is not None:
                policy = "Orphan" if str(orphan).lower() == "true" else "Background"
            grace = _int(query, "gracePeriodSeconds")
            if grace is None and options.get("gracePeriodSeconds") is not None:
                grace = int(options["gracePeriodSeconds"])
            h.send_json(
                200,
                self.api.delete(res, namespace, name, policy, grace, options.get("preconditions")),
            )
        else:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )

    # --- logs -------------------------------------------------------------------------------

    def _log(self, h: _Handler, namespace: str, name: str, query: dict[str, list[str]]) -> None:
        pod = self.store.require(RESOURCES["pods"], namespace, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container", [""])[-1] or containers[0]
        if container not in containers:
            raise bad_request(f"container {container} is not valid for pod {name}")
        tail = _int(query, "tailLines")
        limit = _int(query, "limitBytes")
        timestamps = _flag(query, "timestamps")
        since_seconds = _int(query, "sinceSeconds")
        since = (
            now() - datetime.timedelta(seconds=since_seconds) if since_seconds is not None else None
        )
        runtime = self.kubelet.runtime(pod["metadata"]["uid"])
        if runtime is None:
            statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
            waiting = (statuses[0].get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason") or "ContainerCreating"
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                reason = "trying and failing to pull image"
            raise bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        if not _flag(query, "follow"):
            data = runtime.log.read(tail, timestamps, since)
            h.send_text(200, data[:limit] if limit is not None else data)
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        sent = 0
        cut = threading.Event()
        stream = (cut, runtime.log)
        with self._streams_lock:
            self._streams.add(stream)
        try:

            def stopped() -> bool:
                return cut.is_set() or h.server.stopping.is_set()

            for chunk in runtime.log.follow(tail, timestamps, stopped, since):
                if limit is not None:
                    chunk = chunk[: max(0, limit - sent)]
                if chunk:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    h.wfile.flush()
                    sent += len(chunk)
                if limit is not None and sent >= limit:
                    break
        finally:
            with self._streams_lock:
                self._streams.discard(stream)
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    # --- discovery --------------------------------------------------------------------------

    @staticmethod
    def _is_discovery(parts: list[str]) -> bool:
        return (parts[0] == "api" and len(parts) <= 2) or (parts[0] == "apis" and len(parts) <= 3)

    def _discovery(self, parts: list[str]) -> Obj:
        if not parts:
            paths = ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]
            groups = sorted({r.group for r in RESOURCES.values() if r.group})
            paths += [f"/apis/{g}" for g in groups] + [f"/apis/{g}/v1" for g in groups]
            return {"paths": sorted(paths)}
        if parts == ["version"]:
            return {
                **KUBERNETES_VERSION,
                "gitVersion": "v1.31.0",
                "gitCommit": "emulator",
                "gitTreeState": "clean",
                "buildDate": "2024-08-13T00:00:00Z",
                "goVersion": "go1.22.5",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self._address()}
                ],
            }
        groups = sorted({r.group for r in RESOURCES.values() if r.group})
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g) for g in groups],
            }
        if parts[0] == "apis" and len(parts) == 2 and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])}
        group, version = (
            ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2] if len(parts) > 2 else "")
        )
        resources = [r for r in RESOURCES.values() if r.group == group and r.version == version]
        if not resources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        entries: list[Obj] = []
        for r in resources:
            entries.append(
                {
                    "name": r.plural,
                    "singularName": r.kind.lower(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": sorted(r.verbs),
                }
            )
            for sub in _SUBRESOURCES.get(r.plural, ()):
                entries.append(
                    {
                        "name": f"{r.plural}/{sub}",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": "Pod" if sub == "log" else r.kind,
                        "verbs": ["get"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": entries,
        }

    @staticmethod
    def _group(group: str) -> Obj:
        gv = {"groupVersion": f"{group}/v1", "version": "v1"}
        return {"name": group, "versions": [gv], "preferredVersion": gv}


class ApiServer:
    """The listening socket and its thread."""

    def __init__(self, app: Application, cert_file: str, key_file: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self._server = _Server(app, context)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="k8s-emulator-api",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()  # joins the request threads
        self._thread.join(timeout=10)

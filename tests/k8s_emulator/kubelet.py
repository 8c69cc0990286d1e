"""The kubelet: runs a pod's one container as a local subprocess and keeps its log."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import Obj, now


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()


def _nano(t: datetime.datetime) -> str:
    """Go's RFC3339Nano, as the kubelet stamps log lines: trailing zeros of the fraction
    trimmed (our clock has microseconds)."""
    fraction = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


Line = tuple[datetime.datetime, bytes]


class LogBuffer:
    """A container's stdout+stderr, split into lines as they arrive, each with its time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._lines: list[Line] = []
        self._partial = b""
        self._partial_time = now()
        self.closed = False

    def append(self, data: bytes) -> None:
        with self._cond:
            stamp = now()
            if not self._partial:
                self._partial_time = stamp
            self._partial += data
            *complete, self._partial = self._partial.split(b"\n")
            for i, line in enumerate(complete):
                self._lines.append((self._partial_time if i == 0 else stamp, line + b"\n"))
            if complete:
                self._partial_time = stamp
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            if self._partial:
                self._lines.append((self._partial_time, self._partial))
                self._partial = b""
            self.closed = True
            self._cond.notify_all()

    def poke(self) -> None:
        """Wake the followers, to re-check whether they should stop."""
        with self._cond:
            self._cond.notify_all()

    @staticmethod
    def _render(lines: list[Line], timestamps: bool) -> bytes:
        if timestamps:
            return b"".join(_nano(ts).encode() + b" " + line for ts, line in lines)
        return b"".join(line for _, line in lines)

    @staticmethod
    def _select(lines: list[Line], tail: int | None, since: datetime.datetime | None) -> list[Line]:
        if since is not None:
            lines = [line for line in lines if line[0] >= since]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        return lines

    def read(
        self, tail: int | None, timestamps: bool, since: datetime.datetime | None = None
    ) -> bytes:
        with self._cond:
            lines = list(self._lines)
            if self._partial:
                lines.append((self._partial_time, self._partial))
        return self._render(self._select(lines, tail, since), timestamps)

    def follow(
        self,
        tail: int | None,
        timestamps: bool,
        stopped: Callable[[], bool],
        since: datetime.datetime | None = None,
    ) -> Iterator[bytes]:
        """The selected lines so far, then complete lines as they arrive, until the
        container's output ends."""
        with self._cond:
            first = self._select(self._lines, tail, since)
            index = len(self._lines)
        if first:
            yield self._render(first, timestamps)
        while True:
            with self._cond:
                while index >= len(self._lines) and not self.closed and not stopped():
                    self._cond.wait(0.2)
                chunk = self._lines[index:]
                index += len(chunk)
                done = self.closed or stopped()
            if chunk:
                yield self._render(chunk, timestamps)
            if done and index >= len(self._lines):
                return


class ContainerConfigError(Exception):
    pass


@dataclass
class Runtime:
    """A started container."""

    process: subprocess.Popen[bytes] | None
    log: LogBuffer
    started_at: str
    container_id: str
    exit_code: int | None = None
    finished_at: str | None = None
    kill_deadline: float | None = None
    restart_at: float | None = None  # restartPolicy OnFailure/Always: when to start again
    reader: threading.Thread | None = None
    exit_published: bool = False  # its exit is in the pod's status (and counted, once)


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values; `$$` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(sub, value)


def _secret_value(
    store_get: Callable[[str, str, str], Obj | None], ns: str, ref: dict[str, Any]
) -> str | None:
    name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional"))
    secret = store_get("secrets", ns, name)
    if secret is None:
        if optional:
            return None
        raise ContainerConfigError(f'secret "{name}" not found')
    data = secret.get("data") or {}
    if key not in data:
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {key} in Secret {ns}/{name}")
    return base64.b64decode(data[key]).decode("utf-8", "replace")


def _field_value(pod: Obj, path: str) -> str:
    meta = pod["metadata"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path not in values:
        raise ContainerConfigError(f"unsupported fieldRef {path}")
    return str(values[path])


@dataclass
class Kubelet:
    """Starts and stops the processes; the controller loop decides when."""

    root: Path  # per-cluster temp folder: pods/<uid>/{serviceaccount,home}
    base_env: dict[str, str]  # PATH, HOME, LANG, KUBERNETES_SERVICE_*
    images: dict[str, Image]
    store_get: Callable[[str, str, str], Obj | None]
    issue_token: Callable[[str, str, tuple[str, str, str]], str]
    ca_pem: bytes
    on_exit: Callable[[Obj, Runtime], None]
    runtimes: dict[str, Runtime] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def environment(self, pod: Obj, container: dict[str, Any], image: Image) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env = dict(self.base_env)
        env["HOME"] = str(self.pod_dir(pod) / "home")
        env["HOSTNAME"] = pod["metadata"]["name"]
        env["WHIMBREL_SERVICEACCOUNT_DIR"] = str(self.pod_dir(pod) / "serviceaccount")
        env.update(dict(image.env))
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref is None:
                raise ContainerConfigError("only envFrom.secretRef is supported")
            secret = self.store_get("secrets", ns, ref.get("name", ""))
            if secret is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'secret "{ref.get("name")}" not found')
            prefix = source.get("prefix", "")
            for key, value in (secret.get("data") or {}).items():
                env[prefix + key] = base64.b64decode(value).decode("utf-8", "replace")
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" in var:
                source = var["valueFrom"]
                if "secretKeyRef" in source:
                    value = _secret_value(self.store_get, ns, source["secretKeyRef"])
                    if value is None:
                        continue
                elif "fieldRef" in source:
                    value = _field_value(pod, source["fieldRef"].get("fieldPath", ""))
                else:
                    raise ContainerConfigError(f"unsupported valueFrom for {name}")
                env[name] = value
            else:
                env[name] = expand(var.get("value", ""), env)
        return env

    def pod_dir(self, pod: Obj) -> Path:
        return self.root / "pods" / pod["metadata"]["uid"]

    def _mount_service_account(self, pod: Obj) -> None:
        spec, meta = pod["spec"], pod["metadata"]
        ns, sa_name = meta["namespace"], spec.get("serviceAccountName") or "default"
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            sa = self.store_get("serviceaccounts", ns, sa_name) or {}
            automount = sa.get("automountServiceAccountToken", True)
        if not automount:
            return
        folder = self.pod_dir(pod) / "serviceaccount"
        folder.mkdir(parents=True, exist_ok=True)
        token = self.issue_token(ns, sa_name, (ns, meta["name"], meta["uid"]))
        (folder / "token").write_text(token)
        (folder / "ca.crt").write_bytes(self.ca_pem)
        (folder / "namespace").write_text(ns)

    def start(self, pod: Obj) -> Runtime:
        """Start the container; ContainerConfigError leaves the pod waiting. A command that
        cannot run gives a Runtime that already exited with 128 (StartError)."""
        container = pod["spec"]["containers"][0]
        image = self.images[container["image"]]
        env = self.environment(pod, container, image)
        command = container.get("command")
        args = container.get("args")
        argv = list(command) if command else list(image.entrypoint)
        if args is not None:
            argv += list(args)
        elif not command:
            argv += list(image.cmd)
        argv = [expand(a, env) for a in argv]
        folder = self.pod_dir(pod)
        (folder / "home").mkdir(parents=True, exist_ok=True)
        self._mount_service_account(pod)
        cwd = container.get("workingDir") or image.workdir or str(folder / "home")
        log = LogBuffer()
        started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # a new id per container run (restarts included)
        container_id = (
            "containerd://"
            + hashlib.sha256(f"{pod['metadata']['uid']}/{time.time_ns()}".encode()).hexdigest()
        )
        runtime = Runtime(None, log, started, container_id)
        executable = argv[0] if argv else ""
        if executable and "/" not in executable:
            executable = shutil.which(executable, path=env.get("PATH", "")) or ""
        try:
            if not executable:
                raise FileNotFoundError(
                    f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH'
                )
            runtime.process = subprocess.Popen(
                [executable, *argv[1:]],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a kill reaches its children
            )
        except OSError as exc:
            log.append(f"{exc}\n".encode())
            log.close()
            runtime.exit_code = 128
            runtime.finished_at = started
            with self.lock:
                self.runtimes[pod["metadata"]["uid"]] = runtime
            self.on_exit(pod, runtime)
            return runtime
        with self.lock:
            self.runtimes[pod["metadata"]["uid"]] = runtime
        runtime.reader = threading.Thread(
            target=self._read,
            args=(pod, runtime),
            name=f"kubelet-{pod['metadata']['name']}",
            daemon=True,
        )
        runtime.reader.start()
        return runtime

    def _read(self, pod: Obj, runtime: Runtime) -> None:
        process = runtime.process
        assert process is not None and process.stdout is not None
        fd = process.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            runtime.log.append(data)
        code = process.wait()
        process.stdout.close()
        runtime.exit_code = code if code >= 0 else 128 - code  # killed by a signal: 128+n
        runtime.finished_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        runtime.log.close()
        self.on_exit(pod, runtime)

    def runtime(self, uid: str) -> Runtime | None:
        with self.lock:
            return self.runtimes.get(uid)

    def signal(self, uid: str, sig: int) -> None:
        runtime = self.runtime(uid)
        if runtime is None or runtime.process is None or runtime.exit_code is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(runtime.process.pid, sig)

    def terminate(self, uid: str, grace: float) -> None:
        """SIGTERM now; the controller sends SIGKILL at the deadline."""
        runtime = self.runtime(uid)
        if runtime is None:
            return
        if runtime.kill_deadline is None:
            runtime.kill_deadline = time.monotonic() + grace
            self.signal(uid, signal.SIGTERM if grace > 0 else signal.SIGKILL)

    def forget(self, uid: str) -> None:
        with self.lock:
            self.runtimes.pop(uid, None)

    def shutdown(self) -> None:
        """Kill every process group and wait for the readers."""
        with self.lock:
            runtimes = list(self.runtimes.items())
        for uid, _ in runtimes:
            self.signal(uid, signal.SIGKILL)
        for _, runtime in runtimes:
            if runtime.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    runtime.process.wait(timeout=5)
            if runtime.reader is not None:
                runtime.reader.join(timeout=5)

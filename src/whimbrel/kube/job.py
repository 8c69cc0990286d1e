"""The operator's side of `--as-k8s-job`: create the Job (and its Secret), follow it.

Following is polling (the API server's watch is not needed, and polling survives dropped
connections): the Job and its pods are read every POLL_SECONDS; each pod's log is
streamed by a thread of its own as soon as its container has started, each line marked
with the pod's name. A pod that fails is reported and the next pod the Job makes is
followed; the run ends when a pod succeeds, the Job fails, or the timeout passes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn, cast

from lightkube import ApiError, Client
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod, Secret
from lightkube.types import CascadeType

from whimbrel.errors import JobFailed, JobTimeout, KubeError
from whimbrel.kube import api
from whimbrel.kube.manifests import JobSettings, job_manifest, secret_manifest
from whimbrel.kube.result import PodResult, parse_line

POLL_SECONDS = 0.5
# After a pod ends, how long to wait for the rest of its log (the result line).
LOG_GRACE_SECONDS = 5.0

Emit = Callable[[str], None]


class CreatedJob:
    """The Job this run created; `uid` selects its pods (never an older Job's)."""

    def __init__(self, name: str, namespace: str, uid: str) -> None:
        self.name = name
        self.namespace = namespace
        self.uid = uid


@contextlib.contextmanager
def interrupts_held(on_first: Callable[[], None]) -> Iterator[None]:
    """Hold a first Ctrl-C or SIGTERM until the block ends, then deliver it.

    A create request cut off half-way may still land on the API server after whimbrel has
    looked for what to clean up, and the Job would then run with nobody following it. Held,
    the signal waits for the API's answer (each request is bounded), and whimbrel deletes
    what it made. A second signal is not held. Only the main thread can hold signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in signals}
    pending: list[int] = []

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def hold(number: int, frame: FrameType | None) -> None:
        if pending:  # asked twice: stop now
            restore()
            signal.raise_signal(number)
            return
        pending.append(number)
        on_first()

    for number in signals:
        signal.signal(number, hold)
    try:
        yield
    finally:
        restore()
        if pending:
            signal.raise_signal(pending[0])  # runs the usual handler: KeyboardInterrupt


def create(
    client: Client,
    settings: JobSettings,
    url: str | None,
    new_name: Callable[[], str],
    attempting: Callable[[str], None] = lambda name: None,
) -> CreatedJob:
    """Create the Job, then (without --url-secret) the Secret holding `url`, owned by it.
    `attempting` hears each name tried (a taken random name is replaced)."""
    for _attempt in range(3):
        attempting(settings.name)
        try:
            created = client.create(cast(Job, Job.from_dict(job_manifest(settings))))
            break
        except ApiError as exc:
            if exc.status.code == 409:  # the random name is taken: draw another
                settings = _renamed(settings, new_name(), own_secret=url is not None)
                continue
            api.fail(f'cannot create the Job "{settings.name}" in "{settings.namespace}"', exc)
        except Exception as exc:
            api.fail(f'cannot create the Job "{settings.name}" in "{settings.namespace}"', exc)
    else:
        raise KubeError(f'cannot create a Job: the names "{settings.name}" and others exist')
    assert created.metadata is not None and created.metadata.uid and created.metadata.name
    job = CreatedJob(created.metadata.name, settings.namespace, created.metadata.uid)
    if url is not None:
        try:
            # Created after the Job, so it can name the Job as its owner from the start and is
            # garbage-collected with it; the pod waits (CreateContainerConfigError) meanwhile.
            client.create(cast(Secret, Secret.from_dict(secret_manifest(settings, url, job.uid))))
        except Exception as exc:
            delete(client, job)
            api.fail(f'cannot create the Secret "{settings.secret_name}" for the URL', exc)
    return job


def _renamed(settings: JobSettings, name: str, *, own_secret: bool) -> JobSettings:
    from dataclasses import replace

    return replace(settings, name=name, secret_name=name if own_secret else settings.secret_name)


def delete(client: Client, job: CreatedJob) -> bool | None:
    """Delete the Job with its pods (propagation Background).

    True when deleted, None when there was no such Job, False when that failed.
    """
    try:
        client.delete(Job, job.name, namespace=job.namespace, cascade=CascadeType.BACKGROUND)
    except ApiError as exc:
        return None if exc.status.code == 404 else False
    except Exception:
        return False
    return True


@dataclass
class _PodView:
    name: str
    phase: str
    created: str
    started: bool  # the container is running or has terminated: its log can be read
    waiting: str | None  # "ImagePullBackOff: Back-off pulling image ..."
    exit_code: int | None
    terminated_reason: str | None


def _view(pod: Pod) -> _PodView:
    meta = pod.metadata
    status = pod.status
    name = (meta.name if meta else None) or "?"
    created = str(meta.creationTimestamp) if meta and meta.creationTimestamp else ""
    phase = (status.phase if status else None) or "Pending"
    started = False
    waiting = None
    exit_code = None
    reason = None
    for cs in (status.containerStatuses if status else None) or []:
        state = cs.state
        if state is None:
            continue
        if state.running is not None:
            started = True
        if state.terminated is not None:
            started = True
            exit_code = state.terminated.exitCode
            reason = state.terminated.reason
        if state.waiting is not None:
            w = state.waiting
            waiting = ": ".join(x for x in (w.reason, w.message) if x) or "waiting"
    if phase == "Pending" and waiting is None and status is not None:
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                waiting = ": ".join(x for x in (cond.reason, cond.message) if x) or "unschedulable"
    return _PodView(name, phase, created, started, waiting, exit_code, reason)


class _Transient(Exception):
    """A poll that failed on the way (connection, 5xx, 429): the next one may pass."""


def _raise(action: str, exc: Exception) -> NoReturn:
    code = api.status_code(exc)
    if code is None or code >= 500 or code == 429:
        raise _Transient(f"{action}: {api.describe(exc)}") from None
    api.fail(action, exc)  # 401, 403...: polling again will not help


class _PodLog(threading.Thread):
    """Streams one pod's log to `emit`, each line marked with the pod's name.

    The stream can end before the pod's phase is final (a dropped connection, a kubelet
    restart): then the phase is read again and the stream re-opened, skipping the lines
    already shown. While the container is waiting the log endpoint answers 400: retry.
    """

    def __init__(self, client: Client, namespace: str, pod: str, emit: Emit) -> None:
        super().__init__(name=f"log-{pod}", daemon=True)
        self.client = client
        self.namespace = namespace
        self.pod = pod
        self.emit = emit
        self.lines_seen = 0
        self.result: PodResult | None = None
        self.last_lines: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            complete = self._read(follow=True)
            if complete is None:
                return  # the pod is gone (the Job was deleted)
            if self._finished():
                if not complete:  # the stream broke: read what it did not deliver
                    self._read(follow=False)
                return
            self.stop.wait(0.3)

    def _read(self, *, follow: bool) -> bool | None:
        """Show the lines not shown yet; False if the stream broke, None if the pod is gone."""
        try:
            stream = self.client.log(
                self.pod, namespace=self.namespace, follow=follow, newlines=False
            )
            for index, line in enumerate(stream):
                if index < self.lines_seen:
                    continue  # a re-opened stream starts from the beginning
                self.lines_seen += 1
                self._line(line)
                if self.stop.is_set():
                    return True
        except ApiError as exc:
            # 400: the container is waiting to start; anything else: try again.
            return None if exc.status.code == 404 else False
        except Exception:  # a dropped connection: the phase check decides what next
            return False
        return True

    def _line(self, line: str) -> None:
        result = parse_line(line)
        if result is not None:
            self.result = result
            return
        self.last_lines = [*self.last_lines[-4:], line]
        self.emit(f"[{self.pod}] {line}")

    def _finished(self) -> bool:
        try:
            pod = self.client.get(Pod, self.pod, namespace=self.namespace)
        except ApiError as exc:
            return exc.status.code == 404
        except Exception:
            return False
        view = _view(pod)
        return view.phase in ("Succeeded", "Failed") or view.exit_code is not None


class Follower:
    """Follows one Job until a pod succeeds, the Job fails, or the deadline passes."""

    def __init__(self, client: Client, job: CreatedJob, timeout: float, emit: Emit) -> None:
        self.client = client
        self.job = job
        self.timeout = timeout
        self.emit = emit
        self.logs: dict[str, _PodLog] = {}
        self.states: dict[str, str] = {}
        self.failed: list[str] = []
        self.last_failure: tuple[str, PodResult | None, str] | None = None
        self.unreachable = False  # the last poll failed on the way (warned once)

    def run(self) -> PodResult:
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    job = self._get_job()
                    listed = self._pods()
                except _Transient as exc:
                    if time.monotonic() >= deadline:
                        raise JobTimeout(
                            f"timed out after {self.timeout:g} s following the Job "
                            f'"{self.job.name}": {exc}'
                        ) from None
                    if not self.unreachable:
                        self.emit(f"warning: {exc}; retrying")
                    self.unreachable = True
                    time.sleep(POLL_SECONDS)
                    continue
                self.unreachable = False
                pods = sorted((_view(p) for p in listed), key=lambda v: (v.created, v.name))
                for view in pods:
                    done = self._pod(view, deadline)
                    if done is not None:
                        return done
                finished = self._check_job(job, deadline)
                if finished is not None:
                    return finished
                if time.monotonic() >= deadline:
                    raise self._timeout(pods)
                time.sleep(POLL_SECONDS)
        finally:
            for log in self.logs.values():
                log.stop.set()

    # -- reads --------------------------------------------------------------------
    def _get_job(self) -> Job:
        try:
            return self.client.get(Job, self.job.name, namespace=self.job.namespace)
        except Exception as exc:
            if api.status_code(exc) == 404:
                raise JobFailed(
                    f'the Job "{self.job.name}" was deleted before a pod succeeded'
                ) from None
            _raise(f'cannot read the Job "{self.job.name}"', exc)

    def _pods(self) -> list[Pod]:
        try:
            return list(
                self.client.list(
                    Pod, namespace=self.job.namespace, labels={"controller-uid": self.job.uid}
                )
            )
        except Exception as exc:
            _raise(f'cannot list the pods of the Job "{self.job.name}"', exc)

    # -- one pod ------------------------------------------------------------------
    def _pod(self, view: _PodView, deadline: float) -> PodResult | None:
        state = view.phase + (f" ({view.waiting})" if view.waiting else "")
        if self.states.get(view.name) != state:
            if view.name not in self.states:
                self.emit(f"pod {view.name} created")
            if view.waiting:
                self.emit(f"pod {view.name} is {view.phase}: {view.waiting}")
            self.states[view.name] = state
        if view.started and view.name not in self.logs:
            log = _PodLog(self.client, self.job.namespace, view.name, self.emit)
            self.logs[view.name] = log
            log.start()
        if view.phase == "Succeeded":
            log = self._log_of(view)
            log.join(max(0.0, min(LOG_GRACE_SECONDS, deadline - time.monotonic()) + 1))
            self.emit(f"pod {view.name} succeeded")
            if log.result is None:
                self.emit(
                    f"warning: pod {view.name} ended its log without a WHIMBREL-RESULT line "
                    "(does the image run this version of whimbrel?): no report to show"
                )
                return PodResult(exit_code=0, stdout="", error=None)
            return log.result
        if view.phase == "Failed" and view.name not in self.failed:
            self.failed.append(view.name)
            log = self._log_of(view)
            log.join(LOG_GRACE_SECONDS)
            code = f"exit code {view.exit_code}" if view.exit_code is not None else "no exit code"
            reason = f", {view.terminated_reason}" if view.terminated_reason else ""
            why = log.result.error if log.result and log.result.error else ""
            if not why and log.last_lines:
                why = log.last_lines[-1]
            why = _first_line(why)
            self.last_failure = (view.name, log.result, f"{code}{reason}")
            self.emit(f"pod {view.name} failed ({code}{reason})" + (f": {why}" if why else ""))
        return None

    def _log_of(self, view: _PodView) -> _PodLog:
        log = self.logs.get(view.name)
        if log is None:  # it ended between two polls: read its whole log now
            log = _PodLog(self.client, self.job.namespace, view.name, self.emit)
            self.logs[view.name] = log
            log.start()
        return log

    # -- the Job ------------------------------------------------------------------
    def _check_job(self, job: Job, deadline: float) -> PodResult | None:
        conditions = (job.status.conditions if job.status else None) or []
        for cond in conditions:
            if cond.status != "True":
                continue
            if cond.type == "Failed":
                for log in self.logs.values():
                    log.join(max(0.0, min(LOG_GRACE_SECONDS, deadline - time.monotonic())))
                why = ": ".join(x for x in (cond.reason, cond.message) if x) or "failed"
                message = f'the Job "{self.job.name}" failed: {why}'
                error = JobFailed(message)
                if self.last_failure is not None:
                    pod, result, code = self.last_failure
                    message += f"; its last pod {pod} ended with {code}"
                    if result is not None and result.error:
                        message += ":\n" + result.error.removeprefix("error: ")
                    error = JobFailed(message)
                    error.partial = result
                raise error
            if cond.type == "Complete":
                # Complete, but its pod was not seen (already removed): the migrations ran,
                # only the report is lost.
                self.emit(
                    f'the Job "{self.job.name}" completed, but its pod is gone: no report to show'
                )
                return PodResult(exit_code=0, stdout="", error=None)
        return None

    def _timeout(self, pods: list[_PodView]) -> JobTimeout:
        message = f'timed out after {self.timeout:g} s waiting for the Job "{self.job.name}"'
        if not pods:
            message += ": it has made no pod (check `kubectl describe job`: quota, admission)"
        else:
            last = pods[-1]
            message += f": pod {last.name} is {last.phase}"
            if last.waiting:
                message += f" ({last.waiting})"
        return JobTimeout(message)


def _first_line(text: str) -> str:
    """The gist of an error: its first line, and the next one if the first ends with ':'."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    gist = lines[:2] if len(lines) > 1 and lines[0].endswith(":") else lines[:1]
    return " ".join(gist).removeprefix("error: ")

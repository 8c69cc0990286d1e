"""The control loop: scheduler+kubelet for pods, the Job controller, the garbage collector and
the TTL-after-finished controller. One thread, woken by store changes (or every 50 ms)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .api import Api
from .kubelet import ContainerConfigError, Kubelet, Runtime
from .store import RESOURCES, ApiError, Obj, Store, parse_time, rfc3339

log = logging.getLogger("k8s_emulator")

NODE_NAME = "emulator-node"
PODS, JOBS = RESOURCES["pods"], RESOURCES["jobs"]
MAX_GRACE_SECONDS = 3.0  # keep test teardown quick; a real kubelet waits the full grace period


def _condition(
    kind: str,
    status: str,
    reason: str | None = None,
    message: str | None = None,
    probe: bool = False,
) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": rfc3339()}
    if probe:
        cond["lastProbeTime"] = cond["lastTransitionTime"]
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _owner_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def pod_failure_action(spec: dict[str, Any], pod: Obj) -> tuple[str, str]:
    """The action of the first podFailurePolicy rule a failed pod matches ("Count" if none),
    with the message the Job controller writes."""
    policy = spec.get("podFailurePolicy")
    if not policy:
        return "Count", ""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    statuses = pod["status"].get("containerStatuses") or []
    for i, rule in enumerate(policy.get("rules") or []):
        action = rule["action"]
        exit_codes = rule.get("onExitCodes")
        if exit_codes is not None:
            for cs in statuses:
                terminated = (cs.get("state") or {}).get("terminated")
                if not terminated or terminated["exitCode"] == 0:
                    continue
                if exit_codes.get("containerName") not in (None, cs["name"]):
                    continue
                code = terminated["exitCode"]
                if (code in exit_codes["values"]) == (exit_codes["operator"] == "In"):
                    return action, (
                        f"Container {cs['name']} for pod {ns}/{name} failed with exit code "
                        f"{code} matching {action} rule at index {i}"
                    )
        for pattern in rule.get("onPodConditions") or []:
            for cond in pod["status"].get("conditions") or []:
                if cond["type"] == pattern["type"] and cond["status"] == pattern.get(
                    "status", "True"
                ):
                    return action, (
                        f"Pod {ns}/{name} has condition {cond['type']} matching {action} "
                        f"rule at index {i}"
                    )
    return "Count", ""


def _image_id(image: str) -> str:
    digest = hashlib.sha256(image.encode()).hexdigest()
    return f"docker.io/library/{image.split(':')[0]}@sha256:{digest}"


@dataclass
class _JobState:
    seen_failed: set[str] = field(default_factory=set)
    failed: int = 0
    policy_failure: str | None = None
    last_failure: float = 0.0
    next_create: float = 0.0
    finished_at: float | None = None


@dataclass
class _PodState:
    pull_started: float | None = None
    next_try: float = 0.0


class Controllers:
    def __init__(self, store: Store, api: Api, kubelet: Kubelet, backoff: Any) -> None:
        self.store, self.api, self.kubelet = store, api, kubelet
        self._backoff = backoff  # callable returning the cluster's current job_backoff_seconds
        self._jobs: dict[str, _JobState] = {}
        self._pods: dict[str, _PodState] = {}
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="k8s-emulator-controllers", daemon=True
        )
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.store.changed:
            self.store.changed.notify_all()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:  # keep the loop alive; tests can inspect .errors
                self.errors.append(traceback.format_exc())
                log.exception("controller sync failed")
            self.store.wait(0.05)

    def sync_once(self) -> None:
        self._garbage_collect()
        self._sync_jobs()
        self._sync_pods()

    # --- garbage collector ----------------------------------------------------------------

    def _garbage_collect(self) -> None:
        with self.store.lock:
            objects = list(self.store.all_objects())
        uids = {obj["metadata"]["uid"] for _, obj in objects}
        for (plural, ns, name), obj in objects:
            res = RESOURCES[plural]
            meta = obj["metadata"]
            if meta.get("deletionTimestamp") and "foregroundDeletion" in (
                meta.get("finalizers") or []
            ):
                dependents = [
                    (k, o)
                    for k, o in objects
                    if any(
                        r.get("uid") == meta["uid"]
                        for r in o["metadata"].get("ownerReferences") or []
                    )
                ]
                for (dplural, dns, dname), dep in dependents:
                    if not dep["metadata"].get("deletionTimestamp"):
                        with contextlib.suppress(ApiError):
                            self.api.delete(RESOURCES[dplural], dns, dname, "Background")
                if not dependents:
                    self.store.remove(res, ns, name)
                continue
            refs = meta.get("ownerReferences") or []
            if not refs:
                continue
            absent = [r for r in refs if r.get("uid") not in uids]
            if not absent:
                continue
            if len(absent) == len(refs):
                if not meta.get("deletionTimestamp"):
                    with contextlib.suppress(ApiError):
                        self.api.delete(res, ns, name, "Background")
            else:
                gone = {r.get("uid") for r in absent}

                def strip(o: Obj, gone: set[Any] = gone) -> None:
                    o["metadata"]["ownerReferences"] = [
                        r for r in o["metadata"]["ownerReferences"] if r.get("uid") not in gone
                    ]

                self.store.mutate(res, ns, name, strip)

    # --- Job controller -------------------------------------------------------------------

    def _sync_jobs(self) -> None:
        jobs = self.store.list("jobs")
        live = {j["metadata"]["uid"] for j in jobs}
        for uid in list(self._jobs):
            if uid not in live:
                del self._jobs[uid]
        if not jobs:
            return
        pods_by_owner: dict[str, list[Obj]] = {}
        for pod in self.store.list("pods"):
            owner = _owner_uid(pod)
            if owner:
                pods_by_owner.setdefault(owner, []).append(pod)
        for job in jobs:
            try:
                self._sync_job(job, pods_by_owner.get(job["metadata"]["uid"], []))
            except ApiError:
                self.errors.append(traceback.format_exc())

    def _sync_job(self, job: Obj, pods: list[Obj]) -> None:
        meta, spec = job["metadata"], job["spec"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        state = self._jobs.setdefault(uid, _JobState())
        status = job.get("status") or {}
        conditions = status.get("conditions") or []
        finished = any(
            c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions
        )
        if finished:
            self._ttl(job, state)
            return
        if meta.get("deletionTimestamp"):
            return
        now = time.monotonic()
        for pod in pods:
            pod_uid = pod["metadata"]["uid"]
            if pod["status"].get("phase") == "Failed" and pod_uid not in state.seen_failed:
                state.seen_failed.add(pod_uid)
                state.last_failure = now
                action, message = pod_failure_action(spec, pod)
                if action == "FailJob":
                    state.policy_failure = state.policy_failure or message
                    state.failed += 1
                elif action != "Ignore":  # an ignored failure does not count
                    state.failed += 1
        failed = max(int(status.get("failed", 0)), state.failed)
        # restartPolicy OnFailure: the container restarts in place; its restarts count
        restarts = sum(
            cs.get("restartCount", 0)
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            for cs in p["status"].get("containerStatuses") or []
        )
        succeeded = [p for p in pods if p["status"].get("phase") == "Succeeded"]
        terminating = [p for p in pods if p["metadata"].get("deletionTimestamp")]
        active = [
            p
            for p in pods
            if p["status"].get("phase") in ("Pending", "Running")
            and not p["metadata"].get("deletionTimestamp")
        ]
        failure_target = next((c for c in conditions if c["type"] == "FailureTarget"), None)
        new_conditions: list[dict[str, Any]] = []
        if failure_target is None:
            if state.policy_failure:
                failure_target = _condition(
                    "FailureTarget", "True", "PodFailurePolicy", state.policy_failure, probe=True
                )
            elif succeeded:
                message = "Reached expected number of succeeded pods"
                new_conditions = [
                    _condition(
                        "SuccessCriteriaMet", "True", "CompletionsReached", message, probe=True
                    ),
                    _condition("Complete", "True", "CompletionsReached", message, probe=True),
                ]
            elif failed + restarts > int(spec.get("backoffLimit", 6)):
                failure_target = _condition(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    probe=True,
                )
            elif (
                spec.get("activeDeadlineSeconds") is not None
                and status.get("startTime")
                and (
                    time.time() - parse_time(status["startTime"]).timestamp()
                    >= spec["activeDeadlineSeconds"]
                )
            ):
                failure_target = _condition(
                    "FailureTarget",
                    "True",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    probe=True,
                )
            if failure_target is not None:
                new_conditions = [failure_target]
        if failure_target is not None:
            for pod in active:  # a failed Job's running pods are terminated, and count as failed
                with contextlib.suppress(ApiError):
                    self.api.delete(PODS, ns, pod["metadata"]["name"], "Background")
                    if pod["metadata"]["uid"] not in state.seen_failed:
                        state.seen_failed.add(pod["metadata"]["uid"])
                        state.failed += 1
                        failed += 1
            if not active and not terminating:
                failed_cond = dict(failure_target)
                failed_cond.update(
                    type="Failed", lastTransitionTime=rfc3339(), lastProbeTime=rfc3339()
                )
                new_conditions.append(failed_cond)
            active = []
        elif (
            not new_conditions
            and not active
            and not spec.get("suspend")
            and now >= max(state.last_failure + float(self._backoff()), state.next_create)
        ):
            if self._create_pod(job):
                state.next_create = now + 0.05
            else:
                state.next_create = now + 0.5  # FailedCreate (e.g. no service account); retried

        done = any(c["type"] in ("Complete", "Failed") for c in new_conditions)
        if done:
            state.finished_at = now

        def update(o: Obj) -> None:
            st = o.setdefault("status", {})
            st.setdefault("startTime", rfc3339())
            st["active"] = len(active)
            st["ready"] = sum(1 for p in active if p["status"].get("phase") == "Running")
            st["terminating"] = len(terminating)
            st["uncountedTerminatedPods"] = {}
            if failed:
                st["failed"] = failed
            if succeeded:
                st["succeeded"] = 1
            if new_conditions:
                st["conditions"] = (st.get("conditions") or []) + new_conditions
            if any(c["type"] == "Complete" for c in new_conditions):
                st["completionTime"] = rfc3339()
            if done:
                st["active"] = 0
                st["ready"] = 0

        self.store.mutate(JOBS, ns, name, update)

    def _create_pod(self, job: Obj) -> bool:
        meta, template = job["metadata"], job["spec"]["template"]
        tmeta = template.get("metadata") or {}
        pod_meta: dict[str, Any] = {
            "generateName": f"{meta['name']}-",
            "labels": dict(tmeta.get("labels") or {}),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if tmeta.get("annotations"):
            pod_meta["annotations"] = dict(tmeta["annotations"])
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template["spec"]}
        try:
            self.api.create(PODS, meta["namespace"], body)
        except ApiError as exc:
            log.info("job %s: FailedCreate: %s", meta["name"], exc.message)
            return False
        return True

    def _ttl(self, job: Obj, state: _JobState) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None or job["metadata"].get("deletionTimestamp"):
            return
        if state.finished_at is None:
            conds = job["status"].get("conditions") or []
            stamp = max((c.get("lastTransitionTime", "") for c in conds), default="")
            elapsed = time.time() - parse_time(stamp).timestamp() if stamp else 0.0
            state.finished_at = time.monotonic() - elapsed
        if time.monotonic() >= state.finished_at + ttl:
            meta = job["metadata"]
            with contextlib.suppress(ApiError):
                self.api.delete(JOBS, meta["namespace"], meta["name"], "Background")

    # --- scheduler and kubelet ---------------------------------------------------------------

    def _sync_pods(self) -> None:
        pods = self.store.list("pods")
        live = {p["metadata"]["uid"] for p in pods}
        for uid in list(self._pods):
            if uid not in live:
                del self._pods[uid]
        for pod in pods:
            self._sync_pod(pod)

    def _sync_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        runtime = self.kubelet.runtime(uid)
        if meta.get("deletionTimestamp"):
            if runtime is None or runtime.exit_code is not None:
                self.store.remove(PODS, ns, name)
                self.kubelet.forget(uid)
            elif runtime.kill_deadline is not None and time.monotonic() >= runtime.kill_deadline:
                self.kubelet.signal(uid, signal.SIGKILL)
            elif runtime.kill_deadline is None:
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                self.kubelet.terminate(uid, min(grace, MAX_GRACE_SECONDS))
            return
        if runtime is not None:
            if runtime.restart_at is not None and time.monotonic() >= runtime.restart_at:
                runtime.restart_at = None
                self._start(pod)
            return
        if pod["status"].get("phase") != "Pending":
            return
        state = self._pods.setdefault(uid, _PodState())
        now = time.monotonic()
        if now < state.next_try:
            return
        container = pod["spec"]["containers"][0]
        if not pod["spec"].get("nodeName"):
            self._schedule(pod, container)
            return
        if len(pod["spec"]["containers"]) > 1 or pod["spec"].get("initContainers"):
            # Loud rather than silently running only the first container.
            self._set_waiting(
                pod, "CreateContainerError", "the emulator runs exactly one container per pod"
            )
            state.next_try = now + 1.0
            return
        image = container["image"]
        if image not in self.kubelet.images:
            if state.pull_started is None:
                state.pull_started = now
                reason, message = (
                    "ErrImagePull",
                    (
                        f'failed to pull and unpack image "{image}": failed to resolve reference '
                        f'"{image}": pull access denied, repository does not exist or may '
                        "require authorization"
                    ),
                )
            else:
                reason, message = "ImagePullBackOff", f'Back-off pulling image "{image}"'
            self._set_waiting(pod, reason, message)
            state.next_try = now + 0.3
            return
        try:
            self.kubelet.environment(pod, container, self.kubelet.images[image])
        except ContainerConfigError as exc:
            self._set_waiting(pod, "CreateContainerConfigError", str(exc))
            state.next_try = now + 0.2
            return
        if not self._start(pod):
            state.next_try = now + 0.2

    def _start(self, pod: Obj) -> bool:
        try:
            runtime = self.kubelet.start(pod)
        except ContainerConfigError as exc:  # the Secret went away meanwhile
            self._set_waiting(pod, "CreateContainerConfigError", str(exc))
            return False
        self.publish(pod, runtime)
        return True

    def _container_base(self, container: dict[str, Any]) -> dict[str, Any]:
        image = container["image"]
        registered = image in self.kubelet.images
        return {
            "name": container["name"],
            "image": image,
            "imageID": _image_id(image) if registered else "",
            "restartCount": 0,
        }

    def _schedule(self, pod: Obj, container: dict[str, Any]) -> None:
        def bind(o: Obj) -> None:
            o["spec"]["nodeName"] = NODE_NAME
            o["status"] = {
                "phase": "Pending",
                "conditions": [
                    _condition("PodReadyToStartContainers", "False"),
                    _condition("Initialized", "True"),
                    _condition(
                        "Ready",
                        "False",
                        "ContainersNotReady",
                        f"containers with unready status: [{container['name']}]",
                    ),
                    _condition(
                        "ContainersReady",
                        "False",
                        "ContainersNotReady",
                        f"containers with unready status: [{container['name']}]",
                    ),
                    _condition("PodScheduled", "True"),
                ],
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "startTime": rfc3339(),
                "qosClass": "BestEffort",
                "containerStatuses": [
                    {
                        **self._container_base(container),
                        "ready": False,
                        "started": False,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                    }
                ],
            }

        self.store.mutate(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], bind)

    def _set_waiting(self, pod: Obj, reason: str, message: str) -> None:
        def wait(o: Obj) -> None:
            statuses = o["status"].get("containerStatuses") or []
            for cs in statuses:
                cs["state"] = {"waiting": {"reason": reason, "message": message}}

        self.store.mutate(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], wait)

    def publish(self, pod: Obj, runtime: Runtime) -> None:
        """Write the container's state into the pod's status (running or terminated)."""
        meta = pod["metadata"]
        with self._publish_lock:
            exit_code = runtime.exit_code
            if exit_code is not None:
                # A container that exits at once can be published as exited by its reader
                # thread before _start publishes it as started: count its exit only once
                # (a restart counted twice failed a Job under load), and never overwrite it.
                if runtime.exit_published:
                    return
                runtime.exit_published = True

            policy = pod["spec"].get("restartPolicy", "Always")
            restart = (
                exit_code is not None
                and not meta.get("deletionTimestamp")
                and (policy == "Always" or (policy == "OnFailure" and exit_code != 0))
            )
            if restart:  # the kubelet restarts the container in place, after a back-off
                runtime.restart_at = time.monotonic() + float(self._backoff())

            def update(o: Obj) -> None:
                if o["metadata"]["uid"] != meta["uid"]:
                    return
                st = o["status"]
                container = o["spec"]["containers"][0]
                base = self._container_base(container)
                base["containerID"] = runtime.container_id
                stamp = rfc3339()
                previous = (st.get("containerStatuses") or [{}])[0]
                base["restartCount"] = previous.get("restartCount", 0)
                if "lastState" in previous:
                    base["lastState"] = previous["lastState"]
                if exit_code is None:
                    st["phase"] = "Running"
                    st["podIP"] = "127.0.0.1"
                    st["podIPs"] = [{"ip": "127.0.0.1"}]
                    st["containerStatuses"] = [
                        {
                            **base,
                            "ready": True,
                            "started": True,
                            "state": {"running": {"startedAt": runtime.started_at}},
                        }
                    ]
                    ready = {
                        "Ready": "True",
                        "ContainersReady": "True",
                        "PodReadyToStartContainers": "True",
                    }
                    reason = None
                else:
                    reason = "Completed" if exit_code == 0 else "Error"
                    if runtime.process is None:
                        reason = "StartError"
                    terminated: dict[str, Any] = {
                        "exitCode": exit_code,
                        "reason": reason,
                        "startedAt": runtime.started_at,
                        "finishedAt": runtime.finished_at or stamp,
                        "containerID": runtime.container_id,
                    }
                    if runtime.process is None:
                        terminated["message"] = runtime.log.read(None, False).decode().strip()
                    if restart:
                        name, ns = o["metadata"]["name"], o["metadata"]["namespace"]
                        base["restartCount"] += 1
                        base["lastState"] = {"terminated": terminated}
                        message = (
                            f"back-off {self._backoff()}s restarting failed "
                            f"container={container['name']} pod={name}_{ns}({meta['uid']})"
                        )
                        st["containerStatuses"] = [
                            {
                                **base,
                                "ready": False,
                                "started": False,
                                "state": {
                                    "waiting": {"reason": "CrashLoopBackOff", "message": message}
                                },
                            }
                        ]
                        ready = {"Ready": "False", "ContainersReady": "False"}
                        reason = "ContainersNotReady"
                        self._set_conditions(st, ready, reason, stamp)
                        return
                    st["phase"] = "Succeeded" if exit_code == 0 else "Failed"
                    st["containerStatuses"] = [
                        {
                            **base,
                            "ready": False,
                            "started": False,
                            "state": {"terminated": terminated},
                        }
                    ]
                    ready = {
                        "Ready": "False",
                        "ContainersReady": "False",
                        "PodReadyToStartContainers": "False",
                    }
                    reason = "PodCompleted"
                self._set_conditions(st, ready, reason, stamp)

            self.store.mutate(PODS, meta["namespace"], meta["name"], update)

    @staticmethod
    def _set_conditions(
        st: dict[str, Any], wanted: dict[str, str], reason: str | None, stamp: str
    ) -> None:
        for cond in st.get("conditions") or []:
            if cond["type"] in wanted and cond["status"] != wanted[cond["type"]]:
                cond["status"] = wanted[cond["type"]]
                cond["lastTransitionTime"] = stamp
                cond.pop("message", None)
                cond.pop("reason", None)
                if reason and cond["type"] in ("Ready", "ContainersReady"):
                    cond["reason"] = reason

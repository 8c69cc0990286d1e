"""The Kubernetes API emulator itself, driven with the real lightkube client and raw requests.

Each test gets a fresh cluster (the `k8s_cluster` fixture). Waiting is always polling for a
condition with a deadline (`cluster.wait_for`), never a bare sleep.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.batch_v1 import JobSpec
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.core_v1 import (
    Container,
    EnvVar,
    EnvVarSource,
    ObjectFieldSelector,
    PodSpec,
    PodTemplateSpec,
    SecretKeySelector,
)
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.batch_v1 import Job
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Namespace, Pod, Secret, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding
from lightkube.types import CascadeType, PatchType

from k8s_emulator import EmulatedCluster

PY = "python:3.11"
K8S_VERSION = "1.31"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def cluster(k8s_cluster: EmulatedCluster) -> Iterator[EmulatedCluster]:
    """The fixture cluster with a `python -c` image; fails a test whose emulator raised."""
    k8s_cluster.register_image(PY, [sys.executable, "-c"])
    yield k8s_cluster
    assert k8s_cluster.errors == []


@pytest.fixture
def client(cluster: EmulatedCluster) -> Iterator[Client]:
    c = Client(KubeConfig.from_file(cluster.kubeconfig))
    yield c
    c._client.close()


def python_job(name: str, code: str, backoff_limit: int = 0, **spec: Any) -> Job:
    return Job(
        metadata=ObjectMeta(name=name),
        spec=JobSpec(
            backoffLimit=backoff_limit,
            template=PodTemplateSpec(
                spec=PodSpec(
                    restartPolicy="Never",
                    containers=[Container(name="main", image=PY, args=[code])],
                )
            ),
            **spec,
        ),
    )


def job_condition(client: Client, name: str) -> dict[str, str] | None:
    job = client.get(Job, name)
    conds = job.status.conditions or [] if job.status else []
    done = [c for c in conds if c.type in ("Complete", "Failed") and c.status == "True"]
    return {c.type: c.reason or "" for c in conds} if done else None


def job_pods(client: Client, job: str) -> list[Pod]:
    return list(client.list(Pod, labels={"job-name": job}))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


_SCHEMA_DIR = "kubernetes-json-schema/v1.31.0-local-strict"


def validate_strict(obj: dict[str, Any]) -> None:
    """Strict OpenAPI validation; meta/v1 kinds (Status, discovery) by their schema file,
    since kubernetes-validate looks those up by apiVersion "v1" and finds nothing."""
    kind = obj.get("kind", "")
    if kind in {"Status", "APIVersions", "APIGroupList", "APIGroup", "APIResourceList"}:
        utils = kubernetes_validate.utils
        schema = utils.schema_contents(f"{_SCHEMA_DIR}/{kind.lower()}-meta-v1.json", K8S_VERSION)
        defs = utils.schema_contents(f"{_SCHEMA_DIR}/_definitions.json", K8S_VERSION)
        registry = referencing.Resource.from_contents(defs) @ (
            referencing.Resource.from_contents(schema) @ referencing.Registry()
        )
        jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- server, auth, metadata --------------------------------------------------------------------


def test_kubeconfig_discovery_and_authentication(cluster: EmulatedCluster, client: Client) -> None:
    assert {"default", "kube-system"} <= {n.metadata.name for n in client.list(Namespace)}
    assert client.namespace == "default"
    status, version = cluster.api("GET", "/version")
    assert status == 200 and version["major"] == "1"
    for token in ("", "not-a-token"):
        status, body = cluster.api("GET", "/api/v1/namespaces/default/secrets", token=token)
        assert (status, body["reason"], body["code"]) == (401, "Unauthorized", 401)
        validate_strict(body)
    for path in ("/api", "/apis", "/api/v1", "/apis/batch/v1"):
        status, body = cluster.api("GET", path)
        assert status == 200
        validate_strict(body)


def test_metadata_uid_resource_version_and_generate_name(
    cluster: EmulatedCluster, client: Client
) -> None:
    first = client.create(Secret(metadata=ObjectMeta(generateName="db-"), stringData={"k": "v"}))
    second = client.create(Secret(metadata=ObjectMeta(generateName="db-")))
    assert re.fullmatch(r"db-[bcdfghjklmnpqrstvwxz2456789]{5}", first.metadata.name)
    assert first.metadata.name != second.metadata.name
    assert first.metadata.uid != second.metadata.uid
    assert int(second.metadata.resourceVersion) > int(first.metadata.resourceVersion)
    assert first.data == {"k": "dg=="}
    stored = {s["metadata"]["name"]: s for s in cluster.objects("secrets")}
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
        stored[first.metadata.name]["metadata"]["creationTimestamp"],
    )
    # one global counter: a change to another kind moves it too
    client.create(ServiceAccount(metadata=ObjectMeta(name="sa")))
    third = client.create(Secret(metadata=ObjectMeta(name="x")))
    assert int(third.metadata.resourceVersion) > int(second.metadata.resourceVersion) + 1
    with pytest.raises(ApiError) as err:
        client.create(Secret(metadata=ObjectMeta(name="Not_Valid")))
    assert (err.value.status.code, err.value.status.reason) == (422, "Invalid")


def test_create_existing_is_409_already_exists(cluster: EmulatedCluster, client: Client) -> None:
    client.create(Lease(metadata=ObjectMeta(name="lock"), spec=LeaseSpec(holderIdentity="a")))
    with pytest.raises(ApiError) as err:
        client.create(Lease(metadata=ObjectMeta(name="lock"), spec=LeaseSpec(holderIdentity="b")))
    assert (err.value.status.code, err.value.status.reason) == (409, "AlreadyExists")
    assert err.value.status.message == 'leases.coordination.k8s.io "lock" already exists'
    assert client.get(Lease, "lock").spec.holderIdentity == "a"
    status, body = cluster.api("POST", LEASES, {"metadata": {"name": "lock"}})
    assert (status, body["reason"]) == (409, "AlreadyExists")
    validate_strict(body)


def test_put_with_stale_resource_version_is_409_and_put_replaces(
    cluster: EmulatedCluster, client: Client
) -> None:
    lease = client.create(
        Lease(
            metadata=ObjectMeta(name="lock", labels={"a": "1"}),
            spec=LeaseSpec(holderIdentity="a", leaseDurationSeconds=15, leaseTransitions=2),
        )
    )
    stale = lease.metadata.resourceVersion
    lease.spec.holderIdentity = "b"
    updated = client.replace(lease)
    assert updated.spec.holderIdentity == "b"
    assert int(updated.metadata.resourceVersion) > int(stale)
    lease.metadata.resourceVersion = stale
    lease.spec.holderIdentity = "c"
    with pytest.raises(ApiError) as err:
        client.replace(lease)
    assert (err.value.status.code, err.value.status.reason) == (409, "Conflict")
    assert "the object has been modified" in err.value.status.message
    assert client.get(Lease, "lock").spec.holderIdentity == "b"
    # PUT replaces the whole object: labels and spec fields left out are gone
    status, body = cluster.api(
        "PUT",
        f"{LEASES}/lock",
        {
            "metadata": {"name": "lock", "resourceVersion": updated.metadata.resourceVersion},
            "spec": {"holderIdentity": "d"},
        },
    )
    assert status == 200, body
    assert body["spec"] == {"holderIdentity": "d"}
    assert "labels" not in body["metadata"]
    assert body["metadata"]["uid"] == lease.metadata.uid


def test_concurrent_puts_with_one_resource_version_have_one_winner(
    cluster: EmulatedCluster,
) -> None:
    """The optimistic concurrency the Lease protocol relies on: of racing updates from one
    read, exactly one succeeds."""
    status, lease = cluster.api("POST", LEASES, {"metadata": {"name": "lock"}, "spec": {}})
    assert status == 201
    results: list[int] = []
    start = threading.Barrier(8)

    def take(holder: str) -> None:
        body = {"metadata": dict(lease["metadata"]), "spec": {"holderIdentity": holder}}
        start.wait()
        results.append(cluster.api("PUT", f"{LEASES}/lock", body)[0])

    threads = [threading.Thread(target=take, args=(f"pod-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [409] * 7


def test_put_on_a_lease_without_resource_version_is_422(
    cluster: EmulatedCluster, client: Client
) -> None:
    client.create(Lease(metadata=ObjectMeta(name="lock"), spec=LeaseSpec(holderIdentity="a")))
    status, body = cluster.api("PUT", f"{LEASES}/lock", {"metadata": {"name": "lock"}, "spec": {}})
    assert (status, body["reason"]) == (422, "Invalid")
    assert "metadata.resourceVersion" in body["message"]
    validate_strict(body)
    # other kinds allow an unconditional update
    client.create(Secret(metadata=ObjectMeta(name="s")))
    status, body = cluster.api(
        "PUT",
        "/api/v1/namespaces/default/secrets/s",
        {"metadata": {"name": "s"}, "stringData": {"a": "b"}},
    )
    assert status == 200 and body["data"] == {"a": "Yg=="}


def test_merge_patch_with_stale_resource_version_is_409(
    cluster: EmulatedCluster, client: Client
) -> None:
    lease = client.create(
        Lease(metadata=ObjectMeta(name="lock"), spec=LeaseSpec(holderIdentity="a"))
    )
    rv = lease.metadata.resourceVersion
    patched = client.patch(
        Lease,
        "lock",
        {"metadata": {"resourceVersion": rv}, "spec": {"holderIdentity": "b"}},
        patch_type=PatchType.MERGE,
    )
    assert patched.spec.holderIdentity == "b"
    with pytest.raises(ApiError) as err:
        client.patch(
            Lease,
            "lock",
            {"metadata": {"resourceVersion": rv}, "spec": {"holderIdentity": "c"}},
            patch_type=PatchType.MERGE,
        )
    assert (err.value.status.code, err.value.status.reason) == (409, "Conflict")
    # without a resourceVersion a merge-patch applies to the current object
    patched = client.patch(
        Lease,
        "lock",
        {"spec": {"holderIdentity": None, "leaseDurationSeconds": 5}},
        patch_type=PatchType.MERGE,
    )
    assert patched.spec.holderIdentity is None and patched.spec.leaseDurationSeconds == 5
    status, body = cluster.api(
        "PATCH",
        f"{LEASES}/lock",
        [{"op": "replace", "path": "/spec/leaseDurationSeconds", "value": 7}],
        content_type="application/json-patch+json",
    )
    assert status == 200 and body["spec"]["leaseDurationSeconds"] == 7


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.000Z",
        "2024-01-01T00:00:00.000000",
        "2024-01-01T00:00:00.0000000Z",
        "2024-01-01 00:00:00.000000Z",
        "2024-01-01T00:00:00.000000+0000",
        "2024-13-01T00:00:00.000000Z",
        "1704067200",
    ],
)
def test_lease_times_need_six_fractional_digits(cluster: EmulatedCluster, stamp: str) -> None:
    for field in ("acquireTime", "renewTime"):
        status, body = cluster.api(
            "POST", LEASES, {"metadata": {"name": "lock"}, "spec": {field: stamp}}
        )
        assert (status, body["reason"]) == (400, "BadRequest"), (field, body)
    good = "2024-01-01T00:00:00.000000Z"
    status, lease = cluster.api(
        "POST",
        LEASES,
        {"metadata": {"name": "lock"}, "spec": {"acquireTime": good, "renewTime": good}},
    )
    assert status == 201, lease
    validate_strict(lease)
    lease["spec"]["renewTime"] = stamp
    assert cluster.api("PUT", f"{LEASES}/lock", lease)[0] == 400
    # Go's layout takes an offset too; the server answers in UTC
    lease["spec"]["renewTime"] = "2024-01-01T01:30:00.000000+01:00"
    status, body = cluster.api("PUT", f"{LEASES}/lock", lease)
    assert status == 200 and body["spec"]["renewTime"] == "2024-01-01T00:30:00.000000Z"
    lease = body
    lease["spec"]["renewTime"] = stamp
    status, body = cluster.api("PUT", f"{LEASES}/lock", lease)
    assert (status, body["reason"]) == (400, "BadRequest")
    status, body = cluster.api("PATCH", f"{LEASES}/lock", {"spec": {"renewTime": stamp}})
    assert status == 400


def test_bodies_are_decoded_as_the_server_does(cluster: EmulatedCluster) -> None:
    """A wrongly typed value is a 400; an unknown field is dropped, or a 400 when strict."""
    status, body = cluster.api(
        "POST", LEASES, {"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": "15"}}
    )
    assert (status, body["reason"]) == (400, "BadRequest")
    assert "spec.leaseDurationSeconds" in body["message"]
    status, body = cluster.api(
        "POST", LEASES, {"metadata": {"name": "l"}, "spec": {"holder": "typo"}}
    )
    assert status == 201 and body["spec"] == {}
    status, body = cluster.api(
        "POST",
        f"{LEASES}?fieldValidation=Strict",
        {"metadata": {"name": "m"}, "spec": {"holder": "typo"}},
    )
    assert (status, body["message"]) == (400, 'strict decoding error: unknown field "spec.holder"')
    job = python_job("j", "pass").to_dict()
    job["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "N", "value": 3}]
    status, body = cluster.api("POST", "/apis/batch/v1/namespaces/default/jobs", job)
    assert (status, body["reason"]) == (400, "BadRequest")


def test_dry_run_validates_and_writes_nothing(cluster: EmulatedCluster, client: Client) -> None:
    rv = cluster.store.resource_version
    made = client.create(Secret(metadata=ObjectMeta(generateName="s-")), dry_run=True)
    assert made.metadata.name.startswith("s-") and made.metadata.resourceVersion is None
    assert cluster.objects("secrets") == [] and cluster.store.resource_version == rv
    with pytest.raises(ApiError) as err:  # still validated
        client.create(Secret(metadata=ObjectMeta(name="Bad_Name")), dry_run=True)
    assert err.value.status.code == 422
    lease = client.create(Lease(metadata=ObjectMeta(name="l"), spec=LeaseSpec(holderIdentity="a")))
    lease.spec.holderIdentity = "b"
    assert client.replace(lease, dry_run=True).spec.holderIdentity == "b"
    client.delete(Lease, "l", dry_run=True)
    assert client.get(Lease, "l").spec.holderIdentity == "a"
    lease.metadata.resourceVersion = "1"
    with pytest.raises(ApiError) as err:  # conflicts too
        client.replace(lease, dry_run=True)
    assert err.value.status.code == 409


# --- RBAC ------------------------------------------------------------------------------------


def test_rbac_from_the_roles_and_bindings_created(cluster: EmulatedCluster, client: Client) -> None:
    client.create(ServiceAccount(metadata=ObjectMeta(name="migrator")))
    token = cluster.service_account_token("default", "migrator")
    identity = cluster.token_identity(token)
    assert identity is not None and identity.user == "system:serviceaccount:default:migrator"

    status, body = cluster.api("GET", f"{LEASES}/migration-job-lock", token=token)
    assert (status, body["reason"]) == (403, "Forbidden")
    assert body["message"] == (
        'leases.coordination.k8s.io "migration-job-lock" is forbidden: User '
        '"system:serviceaccount:default:migrator" cannot get resource "leases" in API group '
        '"coordination.k8s.io" in the namespace "default"'
    )
    validate_strict(body)

    role = client.create(
        Role(
            metadata=ObjectMeta(name="lease-rw"),
            rules=[
                PolicyRule(
                    apiGroups=["coordination.k8s.io"],
                    resources=["leases"],
                    verbs=["get", "create", "update"],
                ),
                PolicyRule(apiGroups=[""], resources=["pods/log"], verbs=["get"]),
                PolicyRule(
                    apiGroups=[""], resources=["secrets"], verbs=["get"], resourceNames=["allowed"]
                ),
            ],
        )
    )
    validate_strict(role.to_dict())
    # a Role alone grants nothing; the binding does
    assert cluster.api("GET", f"{LEASES}/migration-job-lock", token=token)[0] == 403
    binding = client.create(
        RoleBinding(
            metadata=ObjectMeta(name="lease-rw"),
            roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="Role", name="lease-rw"),
            subjects=[Subject(kind="ServiceAccount", name="migrator", namespace="default")],
        )
    )
    validate_strict(binding.to_dict())
    assert cluster.api("GET", f"{LEASES}/migration-job-lock", token=token)[0] == 404
    status, lease = cluster.api(
        "POST", LEASES, {"metadata": {"name": "migration-job-lock"}, "spec": {}}, token=token
    )
    assert status == 201
    assert cluster.api("PUT", f"{LEASES}/migration-job-lock", lease, token=token)[0] == 200
    status, body = cluster.api("DELETE", f"{LEASES}/migration-job-lock", token=token)
    assert status == 403 and 'cannot delete resource "leases"' in body["message"]
    status, body = cluster.api("PATCH", f"{LEASES}/migration-job-lock", {"spec": {}}, token=token)
    assert status == 403 and "cannot patch" in body["message"]
    status, body = cluster.api("GET", LEASES, token=token)
    assert status == 403 and body["message"].startswith("leases.coordination.k8s.io is forbidden")
    # subresources are their own resource; resourceNames restrict by name
    status, body = cluster.api("GET", "/api/v1/namespaces/default/pods/p", token=token)
    assert status == 403
    assert cluster.api("GET", "/api/v1/namespaces/default/pods/p/log", token=token)[0] == 404
    client.create(Secret(metadata=ObjectMeta(name="allowed")))
    client.create(Secret(metadata=ObjectMeta(name="other")))
    assert cluster.api("GET", "/api/v1/namespaces/default/secrets/allowed", token=token)[0] == 200
    assert cluster.api("GET", "/api/v1/namespaces/default/secrets/other", token=token)[0] == 403
    # another namespace: nothing bound there
    assert (
        cluster.api(
            "GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x", token=token
        )[0]
        == 403
    )
    # deleting the binding takes the permission away; deleting the account, the identity
    client.delete(RoleBinding, "lease-rw")
    assert cluster.api("GET", f"{LEASES}/migration-job-lock", token=token)[0] == 403
    client.delete(ServiceAccount, "migrator")
    assert cluster.api("GET", f"{LEASES}/migration-job-lock", token=token)[0] == 401


def test_cluster_role_bound_in_a_namespace(cluster: EmulatedCluster) -> None:
    cluster.api(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}],
        },
    )
    cluster.api("POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "r"}})
    status, _ = cluster.api(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        {
            "metadata": {"name": "r"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "r", "namespace": "default"}],
        },
    )
    assert status == 201
    token = cluster.service_account_token("default", "r")
    assert cluster.api("GET", "/api/v1/namespaces/default/pods", token=token)[0] == 200
    assert cluster.api("GET", "/api/v1/namespaces/kube-system/pods", token=token)[0] == 403
    assert (
        cluster.api(
            "POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "x"}}, token=token
        )[0]
        == 403
    )


# --- Job controller --------------------------------------------------------------------------


def test_failed_pod_is_replaced_after_the_backoff_then_the_job_completes(
    cluster: EmulatedCluster, client: Client, tmp_path: Path
) -> None:
    cluster.job_backoff_seconds = 1.0
    marker = tmp_path / "first-attempt-done"
    # each attempt records the time (the first as it exits, the second as it starts): the
    # emulator's whole-second timestamps cannot show a 1 s back-off, and polling may be late
    code = (
        "import pathlib, sys, time\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists():\n"
        "    print('first attempt fails')\n"
        "    m.write_text(repr(time.time())); sys.exit(3)\n"
        f"pathlib.Path({str(tmp_path / 'second')!r}).write_text(repr(time.time()))\n"
        "print('second attempt works')\n"
    )
    created = client.create(python_job("migrate", code, backoff_limit=2))
    validate_strict(created.to_dict())
    assert created.spec.selector.matchLabels == {
        "batch.kubernetes.io/controller-uid": created.metadata.uid
    }

    conditions = cluster.wait_for("the Job to finish", lambda: job_condition(client, "migrate"))
    assert conditions == {
        "SuccessCriteriaMet": "CompletionsReached",
        "Complete": "CompletionsReached",
    }
    job = client.get(Job, "migrate")
    assert (job.status.failed, job.status.succeeded, job.status.active) == (1, 1, 0)
    assert job.status.completionTime is not None and job.status.startTime is not None
    validate_strict(job.to_dict())
    pods = sorted(job_pods(client, "migrate"), key=lambda p: p.metadata.creationTimestamp)
    assert len(pods) == 2
    assert {p.status.phase for p in pods} == {"Failed", "Succeeded"}
    for pod in pods:
        assert re.fullmatch(r"migrate-[a-z0-9]{5}", pod.metadata.name)
        labels = pod.metadata.labels
        assert labels["job-name"] == labels["batch.kubernetes.io/job-name"] == "migrate"
        assert (
            labels["controller-uid"]
            == labels["batch.kubernetes.io/controller-uid"]
            == job.metadata.uid
        )
        (owner,) = pod.metadata.ownerReferences
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "Job",
            "migrate",
            job.metadata.uid,
            True,
        )
        validate_strict(pod.to_dict())
    failed = next(p for p in pods if p.status.phase == "Failed")
    succeeded = next(p for p in pods if p.status.phase == "Succeeded")
    state = failed.status.containerStatuses[0].state.terminated
    assert (state.exitCode, state.reason) == (3, "Error")
    assert succeeded.status.containerStatuses[0].state.terminated.reason == "Completed"
    assert list(client.log(failed.metadata.name)) == ["first attempt fails\n"]
    assert list(client.log(succeeded.metadata.name)) == ["second attempt works\n"]
    # the replacement started only after the back-off (1 s) from the failure
    gap = float((tmp_path / "second").read_text()) - float(marker.read_text())
    assert gap >= 1.0


def test_backoff_limit_exceeded(cluster: EmulatedCluster, client: Client) -> None:
    cluster.job_backoff_seconds = 0.05
    client.create(python_job("doomed", "import sys; print('boom'); sys.exit(1)", backoff_limit=1))
    conditions = cluster.wait_for("the Job to fail", lambda: job_condition(client, "doomed"))
    assert conditions == {"FailureTarget": "BackoffLimitExceeded", "Failed": "BackoffLimitExceeded"}
    job = client.get(Job, "doomed")
    assert job.status.failed == 2 and not job.status.succeeded
    failed = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed.message == "Job has reached the specified backoff limit"
    assert failed.lastProbeTime is not None and failed.lastTransitionTime is not None
    validate_strict(job.to_dict())
    pods = job_pods(client, "doomed")
    assert [p.status.phase for p in pods] == ["Failed", "Failed"]
    # no third pod ever comes
    time.sleep(0.3)
    assert len(job_pods(client, "doomed")) == 2


def _with_policy(job: Job, *rules: dict[str, Any]) -> dict[str, Any]:
    body = job.to_dict()
    body["spec"]["podFailurePolicy"] = {"rules": list(rules)}
    return body


def test_pod_failure_policy_fail_job_and_ignore(cluster: EmulatedCluster, tmp_path: Path) -> None:
    cluster.job_backoff_seconds = 0.05
    jobs = "/apis/batch/v1/namespaces/default/jobs"
    fail_job = {
        "action": "FailJob",
        "onExitCodes": {"containerName": "main", "operator": "In", "values": [3, 4]},
    }
    body = _with_policy(python_job("fatal", "raise SystemExit(4)", backoff_limit=5), fail_job)
    status, created = cluster.api("POST", jobs, body)
    assert status == 201, created
    assert created["spec"]["podReplacementPolicy"] == "Failed"

    def conditions(name: str) -> dict[str, dict[str, Any]]:
        job = cluster.api("GET", f"{jobs}/{name}")[1]
        return {c["type"]: c for c in job["status"].get("conditions", [])}

    failed = cluster.wait_for("the Job to fail", lambda: conditions("fatal").get("Failed"))
    (pod,) = cluster.objects("pods")  # no retry despite backoffLimit 5
    assert failed["reason"] == "PodFailurePolicy"
    assert failed["message"] == (
        f"Container main for pod default/{pod['metadata']['name']} failed with exit code 4 "
        "matching FailJob rule at index 0"
    )
    validate_strict(cluster.api("GET", f"{jobs}/fatal")[1])

    # Ignore: the failure does not count toward backoffLimit 0, and the pod is replaced
    marker = tmp_path / "tried"
    code = (
        f"import pathlib, sys\nm = pathlib.Path({str(marker)!r})\n"
        "if not m.exists(): m.touch(); sys.exit(7)\n"
    )
    ignore = {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [7]}}
    assert cluster.api("POST", jobs, _with_policy(python_job("flaky", code), ignore))[0] == 201
    assert cluster.wait_for("the Job to finish", lambda: conditions("flaky").get("Complete"))
    job = cluster.api("GET", f"{jobs}/flaky")[1]
    assert job["status"].get("failed", 0) == 0 and job["status"]["succeeded"] == 1


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "other", "operator": "In", "values": [1]},
            },
            "containerName",
        ),
        (
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2, 1]}},
            "must be ordered",
        ),
        ({"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0]}}, "must not be 0"),
        (
            {"action": "Retry", "onExitCodes": {"operator": "In", "values": [1]}},
            "Unsupported value",
        ),
        ({"action": "Ignore"}, "one of OnExitCodes and OnPodConditions"),
    ],
)
def test_pod_failure_policy_validation(
    cluster: EmulatedCluster, rule: dict[str, Any], message: str
) -> None:
    body = _with_policy(python_job("j", "pass"), rule)
    status, answer = cluster.api("POST", "/apis/batch/v1/namespaces/default/jobs", body)
    assert (status, answer["reason"]) == (422, "Invalid")
    assert message in answer["message"]


def test_pod_failure_policy_needs_restart_policy_never(cluster: EmulatedCluster) -> None:
    body = _with_policy(
        python_job("j", "pass"),
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    )
    body["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    status, answer = cluster.api("POST", "/apis/batch/v1/namespaces/default/jobs", body)
    assert status == 422 and 'only "Never" is supported' in answer["message"]


def test_active_deadline_and_ttl_after_finished(
    cluster: EmulatedCluster, client: Client, tmp_path: Path
) -> None:
    # The container records its pid, so no polling has to catch the short Running window.
    pid_file = tmp_path / "pid"
    code = (
        f"import os, pathlib, time\npathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(60)"
    )
    # startTime has whole seconds, as on a real cluster: the deadline may come up to 1 s early
    client.create(python_job("slow", code, activeDeadlineSeconds=3, ttlSecondsAfterFinished=1))
    conditions = cluster.wait_for("the deadline", lambda: job_condition(client, "slow"))
    assert conditions["Failed"] == "DeadlineExceeded"
    job = client.get(Job, "slow")
    assert job.status.failed == 1 and not job.status.active
    assert pid_file.exists() and not alive(int(pid_file.read_text()))
    # then the TTL controller deletes the Job (and the pods with it, had any remained)
    cluster.wait_for("the TTL", lambda: not cluster.objects("jobs") and not cluster.objects("pods"))
    with pytest.raises(ApiError) as err:
        client.get(Job, "slow")
    assert err.value.status.code == 404


def test_a_container_that_exits_before_its_start_is_published_counts_once(
    cluster: EmulatedCluster, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under load the exit was published first, then the start, which saw the exit too and
    # counted the restart again: two failures looked like four, over the backoff limit.
    kubelet = cluster.controllers.kubelet
    start = kubelet.start

    def slow_start(pod: Any) -> Any:
        runtime = start(pod)
        if runtime.process is not None:
            runtime.process.wait()
        time.sleep(0.2)  # the reader thread publishes the exit meanwhile
        return runtime

    monkeypatch.setattr(kubelet, "start", slow_start)
    test_restart_policy_on_failure_restarts_in_place(cluster, client, tmp_path)


def test_restart_policy_on_failure_restarts_in_place(
    cluster: EmulatedCluster, client: Client, tmp_path: Path
) -> None:
    cluster.job_backoff_seconds = 0.05
    counter = tmp_path / "runs"
    code = (
        f"import pathlib, sys\nc = pathlib.Path({str(counter)!r})\n"
        "n = int(c.read_text()) if c.exists() else 0\nc.write_text(str(n + 1))\n"
        "print('run', n)\nsys.exit(1 if n < 2 else 0)\n"
    )
    job = python_job("retry", code, backoff_limit=3)
    job.spec.template.spec.restartPolicy = "OnFailure"
    client.create(job)
    assert cluster.wait_for("the Job to finish", lambda: job_condition(client, "retry"))["Complete"]
    (pod,) = job_pods(client, "retry")  # one pod, its container restarted twice
    status = pod.status.containerStatuses[0]
    assert pod.status.phase == "Succeeded" and status.restartCount == 2
    assert status.lastState.terminated.exitCode == 1
    validate_strict(pod.to_dict())
    assert list(client.log(pod.metadata.name)) == ["run 2\n"]  # the current container's log

    # restarts count toward the backoff limit; the pod is then killed and counted as failed
    job = python_job("crashing", "raise SystemExit(1)", backoff_limit=1)
    job.spec.template.spec.restartPolicy = "OnFailure"
    client.create(job)
    conditions = cluster.wait_for("the Job to fail", lambda: job_condition(client, "crashing"))
    assert conditions["Failed"] == "BackoffLimitExceeded"
    assert client.get(Job, "crashing").status.failed == 1
    cluster.wait_for("the pod to go", lambda: not job_pods(client, "crashing"))


def test_jobs_need_restart_policy_never_or_on_failure(cluster: EmulatedCluster) -> None:
    job = python_job("j", "pass").to_dict()
    job["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    status, body = cluster.api("POST", "/apis/batch/v1/namespaces/default/jobs", job)
    assert (status, body["reason"]) == (422, "Invalid")
    assert "spec.template.spec.restartPolicy" in body["message"]


def test_job_pods_wait_for_their_service_account(cluster: EmulatedCluster, client: Client) -> None:
    job = python_job("j", "print('ran')")
    job.spec.template.spec.serviceAccountName = "later"
    client.create(job)
    time.sleep(0.3)  # the controller has had several chances; none may create a pod
    assert job_pods(client, "j") == []
    client.create(ServiceAccount(metadata=ObjectMeta(name="later")))
    assert cluster.wait_for("the Job to finish", lambda: job_condition(client, "j"))["Complete"]


# --- deletion -----------------------------------------------------------------------------------


def _running_job(cluster: EmulatedCluster, client: Client, name: str) -> tuple[Job, Pod, int]:
    job = client.create(python_job(name, "import time; print('up', flush=True); time.sleep(60)"))
    pod = cluster.wait_for(
        "the pod to run", lambda: [p for p in job_pods(client, name) if p.status.phase == "Running"]
    )[0]
    (pid,) = cluster.pod_processes()
    return job, pod, pid


def test_delete_job_without_policy_orphans_its_pods(
    cluster: EmulatedCluster, client: Client
) -> None:
    _, pod, pid = _running_job(cluster, client, "orphaning")
    client.delete(Job, "orphaning")
    with pytest.raises(ApiError):
        client.get(Job, "orphaning")
    time.sleep(0.3)  # give the garbage collector its chance to (wrongly) act
    orphan = client.get(Pod, pod.metadata.name)
    assert orphan.metadata.ownerReferences is None
    assert orphan.status.phase == "Running" and alive(pid)
    # a pod deletion kills the process (SIGTERM) and then the object goes
    client.delete(Pod, pod.metadata.name)
    cluster.wait_for("the pod to go", lambda: not cluster.objects("pods"))
    assert not alive(pid)


def test_background_deletion_removes_pods_and_owned_objects(
    cluster: EmulatedCluster, client: Client
) -> None:
    job, _, pid = _running_job(cluster, client, "collected")
    owner = OwnerReference(
        apiVersion="batch/v1", kind="Job", name="collected", uid=job.metadata.uid
    )
    client.create(
        Secret(
            metadata=ObjectMeta(name="collected-url", ownerReferences=[owner]),
            stringData={"url": "x"},
        )
    )
    client.create(Secret(metadata=ObjectMeta(name="unrelated")))
    client.delete(Job, "collected", cascade=CascadeType.BACKGROUND)
    cluster.wait_for(
        "the pods and the secret to go",
        lambda: not cluster.objects("pods") and len(cluster.objects("secrets")) == 1,
    )
    assert [s["metadata"]["name"] for s in cluster.objects("secrets")] == ["unrelated"]
    bad_owner = {
        "metadata": {"name": "x", "ownerReferences": [{"kind": "Job", "name": "j", "uid": ""}]}
    }
    status, body = cluster.api("POST", "/api/v1/namespaces/default/secrets", bad_owner)
    assert (status, body["reason"]) == (422, "Invalid")
    assert not alive(pid)


def test_foreground_deletion_and_delete_options_body(
    cluster: EmulatedCluster, client: Client
) -> None:
    _, _, pid = _running_job(cluster, client, "fg")
    status, body = cluster.api(
        "DELETE",
        "/apis/batch/v1/namespaces/default/jobs/fg",
        {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"},
    )
    assert status == 200 and body["metadata"]["deletionTimestamp"]
    cluster.wait_for("the Job to go", lambda: not cluster.objects("jobs"))
    assert not cluster.objects("pods") and not alive(pid)


# --- kubelet --------------------------------------------------------------------------------


def test_kubelet_environment_service_account_files_and_secret_refs(
    cluster: EmulatedCluster, client: Client
) -> None:
    client.create(
        Secret(metadata=ObjectMeta(name="db"), stringData={"url": "postgresql://u:p@h/db"})
    )
    code = (
        "import json, os, pathlib\n"
        "sa = pathlib.Path(os.environ['WHIMBREL_SERVICEACCOUNT_DIR'])\n"
        "print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(),"
        " 'files': {p.name: p.read_text() for p in sa.iterdir()}}))\n"
    )
    job = python_job("env", code)
    job.spec.template.spec.containers[0].env = [
        EnvVar(
            name="DATABASE_URL",
            valueFrom=EnvVarSource(secretKeyRef=SecretKeySelector(name="db", key="url")),
        ),
        EnvVar(
            name="MAYBE",
            valueFrom=EnvVarSource(
                secretKeyRef=SecretKeySelector(name="db", key="nope", optional=True)
            ),
        ),
        EnvVar(
            name="POD_NS",
            valueFrom=EnvVarSource(fieldRef=ObjectFieldSelector(fieldPath="metadata.namespace")),
        ),
        EnvVar(name="PLAIN", value="x-$(POD_NS)"),
    ]
    client.create(job)
    cluster.wait_for("the Job to finish", lambda: job_condition(client, "env"))
    (pod,) = job_pods(client, "env")
    seen = json.loads("".join(client.log(pod.metadata.name)))
    env = seen["env"]
    assert env["HOSTNAME"] == pod.metadata.name
    assert env["DATABASE_URL"] == "postgresql://u:p@h/db"
    assert "MAYBE" not in env
    assert (env["POD_NS"], env["PLAIN"]) == ("default", "x-default")
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == str(cluster.port)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert {"HOME", "LANG"} <= env.keys()
    assert not {"PYTEST_CURRENT_TEST", "VIRTUAL_ENV"} & env.keys()  # nothing leaks from the test
    files = seen["files"]
    assert set(files) == {"token", "ca.crt", "namespace"}
    assert files["namespace"] == "default"
    assert files["ca.crt"] == cluster.ca_file.read_text()
    # each pod has its own token, for its service account; it dies with the pod
    identity = cluster.token_identity(files["token"])
    assert identity is not None and identity.user == "system:serviceaccount:default:default"
    assert files["token"] != cluster.admin_token
    client.delete(Pod, pod.metadata.name)
    cluster.wait_for("the pod to go", lambda: not cluster.objects("pods"))
    assert cluster.token_identity(files["token"]) is None


def test_docker_entrypoint_and_cmd_semantics(cluster: EmulatedCluster, client: Client) -> None:
    cluster.register_image(
        "tool:1", [sys.executable, "-c", "import sys; print(sys.argv[1:])"], cmd=["from-cmd"]
    )
    for name, command, args in [
        ("a", None, None),
        ("b", None, ["x", "y"]),
        ("c", [sys.executable, "-c", "print('own')"], None),
    ]:
        pod = {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "tool:1", "command": command, "args": args}],
            },
        }
        pod["spec"]["containers"][0] = {
            k: v for k, v in pod["spec"]["containers"][0].items() if v is not None
        }
        assert cluster.api("POST", "/api/v1/namespaces/default/pods", pod)[0] == 201
    cluster.wait_for(
        "the pods to finish",
        lambda: all(p["status"]["phase"] == "Succeeded" for p in cluster.objects("pods")),
    )
    logs = {n: "".join(client.log(n)) for n in "abc"}
    assert logs == {"a": "['from-cmd']\n", "b": "['x', 'y']\n", "c": "own\n"}


def test_unknown_image_stays_pending_and_its_log_is_400(
    cluster: EmulatedCluster, client: Client
) -> None:
    job = python_job("badimage", "pass")
    job.spec.template.spec.containers[0].image = "registry.invalid/nope:1"
    client.create(job)

    def backing_off() -> Pod | None:
        pods = job_pods(client, "badimage")
        if pods and pods[0].status.containerStatuses:
            waiting = pods[0].status.containerStatuses[0].state.waiting
            if waiting and waiting.reason == "ImagePullBackOff":
                return pods[0]
        return None

    pod = cluster.wait_for("ImagePullBackOff", backing_off)
    assert pod.status.phase == "Pending"
    validate_strict(pod.to_dict())
    with pytest.raises(ApiError) as err:
        list(client.log(pod.metadata.name))
    assert err.value.status.code == 400
    assert err.value.status.message == (
        f'container "main" in pod "{pod.metadata.name}" is waiting to start: '
        "trying and failing to pull image"
    )
    with pytest.raises(ApiError) as err:
        list(client.log(pod.metadata.name, follow=True))
    assert err.value.status.code == 400
    assert job_condition(client, "badimage") is None


def test_a_pod_with_two_containers_is_refused_loudly(cluster: EmulatedCluster) -> None:
    container = {"name": "a", "image": PY, "args": ["pass"]}
    pod = {
        "metadata": {"name": "two"},
        "spec": {"restartPolicy": "Never", "containers": [container, {**container, "name": "b"}]},
    }
    assert cluster.api("POST", "/api/v1/namespaces/default/pods", pod)[0] == 201

    def waiting() -> str:
        statuses = cluster.objects("pods")[0]["status"].get("containerStatuses") or [{}]
        return str(statuses[0].get("state", {}).get("waiting", {}).get("reason", ""))

    assert cluster.wait_for("the refusal", lambda: waiting() == "CreateContainerError")
    assert cluster.pod_processes() == []


def test_missing_secret_is_create_container_config_error(
    cluster: EmulatedCluster, client: Client
) -> None:
    job = python_job("nosecret", "import os; print(os.environ['URL'])")
    job.spec.template.spec.containers[0].env = [
        EnvVar(
            name="URL",
            valueFrom=EnvVarSource(secretKeyRef=SecretKeySelector(name="late", key="url")),
        )
    ]
    client.create(job)

    def waiting_reason() -> str | None:
        pods = job_pods(client, "nosecret")
        if pods and pods[0].status.containerStatuses:
            waiting = pods[0].status.containerStatuses[0].state.waiting
            return waiting.reason if waiting and waiting.reason != "ContainerCreating" else None
        return None

    assert cluster.wait_for("a config error", waiting_reason) == "CreateContainerConfigError"
    # the kubelet retries: once the Secret exists the container starts
    client.create(Secret(metadata=ObjectMeta(name="late"), stringData={"url": "found"}))
    cluster.wait_for("the Job to finish", lambda: job_condition(client, "nosecret"))
    (pod,) = job_pods(client, "nosecret")
    assert list(client.log(pod.metadata.name)) == ["found\n"]


# --- logs ------------------------------------------------------------------------------------


def test_log_follow_streams_as_output_arrives(
    cluster: EmulatedCluster, client: Client, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    code = (
        "import pathlib, time\n"
        "print('one', flush=True)\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
        "print('two', flush=True)\n"
        "print('partial', end='', flush=True)\n"
    )
    client.create(python_job("follow", code))
    pod = cluster.wait_for(
        "the pod to run",
        lambda: [p for p in job_pods(client, "follow") if p.status.phase == "Running"],
    )[0]
    received: list[str] = []
    ended = threading.Event()

    def consume() -> None:
        for line in client.log(pod.metadata.name, follow=True):
            received.append(line)
        ended.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    # a client that hangs up mid-stream (Ctrl-C) is no server error (the fixture checks)
    quitter = Client(KubeConfig.from_file(cluster.kubeconfig))
    assert next(iter(quitter.log(pod.metadata.name, follow=True))) == "one\n"
    quitter._client.close()
    # the first line arrives while the process still runs: streamed, not held until exit
    cluster.wait_for("the first line", lambda: received == ["one\n"])
    assert not ended.is_set()
    assert cluster.objects("pods")[0]["status"]["phase"] == "Running"
    go.touch()
    assert ended.wait(10), "the stream did not end when the process exited"
    reader.join()
    assert received == ["one\n", "two\n", "partial\n"]
    status, text = cluster.api("GET", f"/api/v1/namespaces/default/pods/{pod.metadata.name}/log")
    assert (status, text) == (200, "one\ntwo\npartial")


def test_drop_log_streams_ends_them_while_the_container_runs(
    cluster: EmulatedCluster, client: Client, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    code = (
        "import pathlib, time\n"
        "print('one', flush=True)\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
        "print('two', flush=True)\n"
    )
    client.create(python_job("cut", code))
    pod = cluster.wait_for(
        "the pod to run",
        lambda: [p for p in job_pods(client, "cut") if p.status.phase == "Running"],
    )[0]
    assert cluster.drop_log_streams() == 0
    received: list[str] = []
    ended = threading.Event()

    def consume() -> None:
        received.extend(client.log(pod.metadata.name, follow=True))
        ended.set()

    threading.Thread(target=consume, daemon=True).start()
    cluster.wait_for("the first line", lambda: received == ["one\n"])
    assert cluster.drop_log_streams() == 1
    assert ended.wait(5), "the stream was not ended"
    assert cluster.objects("pods")[0]["status"]["phase"] == "Running"
    # a new stream is served normally, from the first line
    go.touch()
    assert list(client.log(pod.metadata.name, follow=True)) == ["one\n", "two\n"]
    assert received == ["one\n"]


def test_log_tail_lines_and_timestamps(cluster: EmulatedCluster, client: Client) -> None:
    client.create(python_job("tail", "for i in range(5): print(f'line {i}')"))
    cluster.wait_for("the Job to finish", lambda: job_condition(client, "tail"))
    (pod,) = job_pods(client, "tail")
    name = pod.metadata.name
    assert list(client.log(name, tail_lines=2)) == ["line 3\n", "line 4\n"]
    assert list(client.log(name, tail_lines=2, follow=True)) == ["line 3\n", "line 4\n"]
    assert len(list(client.log(name))) == 5
    # follow on a finished pod gives the whole log, as kubectl logs -f does
    assert list(client.log(name, follow=True)) == list(client.log(name))
    (stamped,) = client.log(name, tail_lines=1, timestamps=True)
    # Go's RFC3339Nano: the fraction's trailing zeros trimmed
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z line 4\n", stamped)
    assert list(client.log(name, since=3600)) == list(client.log(name))
    status, text = cluster.api("GET", f"/api/v1/namespaces/default/pods/{name}/log?limitBytes=8")
    assert (status, text) == (200, "line 0\nl")
    status, body = cluster.api("GET", f"/api/v1/namespaces/default/pods/{name}/log?container=other")
    assert status == 400 and body["reason"] == "BadRequest"
    assert cluster.api("GET", "/api/v1/namespaces/default/pods/nope/log")[0] == 404


# --- lists and selectors -----------------------------------------------------------------------


def test_label_and_field_selectors(cluster: EmulatedCluster, client: Client) -> None:
    for name, labels in [("a", {"app": "x", "tier": "db"}), ("b", {"app": "y"}), ("c", {})]:
        client.create(Secret(metadata=ObjectMeta(name=name, labels=labels)))

    def names(**kw: Any) -> list[str]:
        return [s.metadata.name for s in client.list(Secret, **kw)]

    assert names(labels={"app": "x"}) == ["a"]
    status, body = cluster.api(
        "GET", "/api/v1/namespaces/default/secrets?labelSelector=app%20in%20(x,y),tier!=db"
    )
    assert [i["metadata"]["name"] for i in body["items"]] == ["b"]
    validate_strict(body)
    assert body["metadata"]["resourceVersion"] and "kind" not in body["items"][0]
    for selector, expected in [
        ("app", ["a", "b"]),
        ("!app", ["c"]),
        ("app notin (x)", ["b", "c"]),
        ("app==y", ["b"]),
    ]:
        status, body = cluster.api(
            "GET",
            f"/api/v1/namespaces/default/secrets?labelSelector={selector.replace(' ', '%20')}",
        )
        assert [i["metadata"]["name"] for i in body["items"]] == expected, selector
    assert names(fields={"metadata.name": "b"}) == ["b"]
    status, body = cluster.api("GET", "/api/v1/namespaces/default/secrets?fieldSelector=spec.x%3Dy")
    assert status == 400
    status, body = cluster.api("GET", "/api/v1/namespaces/default/pods?watch=true")
    assert status == 501


# --- schemas -------------------------------------------------------------------------------------


def test_every_kind_the_emulator_returns_is_schema_valid(
    cluster: EmulatedCluster, client: Client
) -> None:
    """Strict OpenAPI validation (unknown fields fail) of each kind in each state."""
    client.create(ServiceAccount(metadata=ObjectMeta(name="sa")))
    client.create(Secret(metadata=ObjectMeta(name="s"), stringData={"a": "b"}))
    client.create(
        Lease(
            metadata=ObjectMeta(name="l"),
            spec=LeaseSpec(
                holderIdentity="h",
                leaseDurationSeconds=3,
                acquireTime="2024-01-01T00:00:00.000000Z",
            ),
        )
    )
    client.create(python_job("ok", "print('ok')"))
    client.create(python_job("ko", "raise SystemExit(2)"))
    client.create(python_job("running", "import time; time.sleep(60)"))
    bad = python_job("pending", "pass")
    bad.spec.template.spec.containers[0].image = "nope:1"
    client.create(bad)
    cluster.wait_for(
        "each pod state",
        lambda: (
            {p["status"].get("phase") for p in cluster.objects("pods")}
            == {"Succeeded", "Failed", "Running", "Pending"}
            and job_condition(client, "ok")
            and job_condition(client, "ko")
        ),
    )
    kinds: set[str] = set()
    paths = [
        "/api/v1/namespaces",
        "/api/v1/namespaces/default/pods",
        "/api/v1/namespaces/default/secrets",
        "/api/v1/namespaces/default/serviceaccounts",
        "/apis/batch/v1/namespaces/default/jobs",
        LEASES,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
    ]
    for path in paths:
        status, listing = cluster.api("GET", path)
        assert status == 200
        validate_strict(listing)
        kinds.add(listing["kind"])
        for item in listing["items"]:
            status, obj = cluster.api("GET", f"{path}/{item['metadata']['name']}")
            validate_strict(obj)
            kinds.add(obj["kind"])
    for code, path in [
        (404, "/api/v1/namespaces/default/pods/nope"),
        (400, "/api/v1/namespaces/default/secrets?fieldSelector=x"),
    ]:
        status, body = cluster.api("GET", path)
        assert status == code
        validate_strict(body)
    status, body = cluster.api("DELETE", "/api/v1/namespaces/default/secrets/s")
    validate_strict(body)
    assert {
        "Pod",
        "Job",
        "Secret",
        "ServiceAccount",
        "Lease",
        "Namespace",
        "PodList",
        "JobList",
    } <= kinds


def test_teardown_kills_every_pod_process(tmp_path: Path) -> None:
    cluster = EmulatedCluster(tmp_path / "k8s")
    try:
        cluster.register_image(PY, [sys.executable, "-c"])
        # the container starts a child of its own: the kill must reach it too
        code = (
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n"
        )
        status, _ = cluster.api(
            "POST",
            "/api/v1/namespaces/default/pods",
            {
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "image": PY, "args": [code]}]},
            },
        )
        assert status == 201
        log = "/api/v1/namespaces/default/pods/p/log"

        def child_pid() -> str:
            status, text = cluster.api("GET", log)
            return text.strip() if status == 200 else ""

        child = int(cluster.wait_for("the child's pid", child_pid))
        (pid,) = cluster.pod_processes()
        # an idle keep-alive connection, and a log stream in progress, must not hold it up
        idle = Client(KubeConfig.from_file(cluster.kubeconfig))
        assert idle.list(Namespace)
        stream = iter(idle.log("p", follow=True))
        assert next(stream).strip() == str(child)
    finally:
        started = time.monotonic()
        cluster.close()
    assert not alive(pid) and not alive(child)
    assert time.monotonic() - started < 5
    left = ("k8s-emulator", "kubelet-")
    assert not [t for t in threading.enumerate() if t.name.startswith(left)]
    assert not [t for t in threading.enumerate() if "process_request_thread" in t.name]

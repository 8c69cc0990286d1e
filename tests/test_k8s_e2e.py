"""`--as-k8s-job` end to end: the real CLI as a subprocess, against the Kubernetes emulator.

The emulator (tests/k8s_emulator, see its CONTRACT.md) runs each pod as a local process
with the image's ENTRYPOINT, parsed from the repository's Dockerfile, so the pods run the
command the image runs. RBAC is installed from `whimbrel k8s manifests` itself, so these
tests also prove the printed manifests are enough.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Database, run_cli, whimbrel_executable, write_tree

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "whimbrel:test"
NS = "default"
LEASE = "migration-job-lock"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
MICRO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


def dockerfile_entrypoint() -> list[str]:
    """The exec-form ENTRYPOINT of the Dockerfile's final stage."""
    found = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert found, "the Dockerfile has no exec-form ENTRYPOINT"
    entrypoint = json.loads(found[-1])
    assert isinstance(entrypoint, list) and entrypoint
    return [str(part) for part in entrypoint]


def install(
    cluster: Any, *, kinds: tuple[str, ...] = ("ServiceAccount", "Role", "RoleBinding")
) -> None:
    """`whimbrel k8s manifests | kubectl apply -f -`, through the emulator's API."""
    printed = run_cli("k8s", "manifests", "--namespace", NS)
    assert printed.returncode == 0, printed.stderr
    for doc in yaml.safe_load_all(printed.stdout):
        if doc and doc["kind"] in kinds:
            path = _PATHS[doc["kind"]].format(ns=doc["metadata"]["namespace"])
            status, body = cluster.api("POST", path, doc)
            assert status == 201, body


@pytest.fixture
def cluster(k8s_cluster: Any) -> Iterator[Any]:
    k8s_cluster.register_image(IMAGE, dockerfile_entrypoint())
    yield k8s_cluster
    assert k8s_cluster.errors == []


@pytest.fixture
def rbac(cluster: Any) -> Any:
    install(cluster)
    return cluster


def job_argv(cluster: Any, command: str, path: Path, *args: str) -> list[str]:
    return [
        *whimbrel_executable(), "migrations", command, str(path), "--as-k8s-job",
        "--kubeconfig", str(cluster.kubeconfig), "--image", IMAGE, *args,
    ]  # fmt: skip


def as_job(
    cluster: Any, command: str, path: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "migrations", command, str(path), "--as-k8s-job",
        "--kubeconfig", str(cluster.kubeconfig), "--image", IMAGE, *args,
        timeout=timeout,
    )  # fmt: skip


def lease(cluster: Any) -> dict[str, Any] | None:
    status, body = cluster.api("GET", f"{LEASES}/{LEASE}")
    if status == 404:
        return None
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def tree(tmp_path: Path, extra: dict[str, str] | None = None) -> Path:
    return write_tree(
        tmp_path / "migrations",
        {
            "app/001_init.up.sql": "CREATE TABLE things (id INT PRIMARY KEY);",
            "app/001_init.down.sql": "DROP TABLE things;",
            **(extra or {}),
        },
    )


def pods(cluster: Any) -> list[dict[str, Any]]:
    return list(cluster.objects("pods"))


def pod_named_by_phase(cluster: Any, phase: str) -> str:
    """The one pod in `phase`: creationTimestamp has whole seconds, so it cannot order
    pods created within one second, and their random names do not either."""
    (name,) = (p["metadata"]["name"] for p in pods(cluster) if p["status"]["phase"] == phase)
    return str(name)


# -- the scenarios ------------------------------------------------------------------------
def test_apply_on_postgres_through_a_job_and_the_url_is_in_no_spec(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    password = "Pw4-job-spec"
    url = postgres_db.url.replace("postgres@", f"postgres:{password}@")  # trust: not checked
    migrations = tree(tmp_path, {"app/002_more.up.sql": "ALTER TABLE things ADD name TEXT;"})
    result = as_job(rbac, "apply", migrations, "--url", url)
    assert result.returncode == 0, result.stderr

    # The pod's log, streamed, marked with the pod's name; then the local command's report.
    (pod,) = pods(rbac)
    name = pod["metadata"]["name"]
    assert f"[{name}] app: applying 001_init.up.sql ... applied in" in result.stderr
    assert f'[{name}] holding the Lease "{LEASE}"' in result.stderr
    assert f"pod {name} succeeded" in result.stderr
    assert result.stdout.splitlines()[-1].startswith("Applied 2 migrations in 1 set")
    assert "WHIMBREL-RESULT" not in result.stdout + result.stderr
    assert postgres_db.tracking("app")[-1][:2] == (2, "applied")

    # The URL is in no Job or pod spec, nor anywhere in the output.
    (job,) = rbac.objects("jobs")
    for obj in (job, pod):
        text = json.dumps(obj)
        assert password not in text and postgres_db.name not in text, obj["kind"]
    assert password not in result.stdout + result.stderr
    container = pod["spec"]["containers"][0]
    assert container["image"] == IMAGE and "command" not in container  # the ENTRYPOINT runs
    assert container["args"] == ["migrations", "apply", "--in-cluster", str(migrations)]
    ref = next(e for e in container["env"] if e["name"] == "DATABASE_URL")
    # ... but in a Secret the Job owns, so it is collected with the Job.
    (secret,) = [
        s
        for s in rbac.objects("secrets")
        if s["metadata"]["name"] == ref["valueFrom"]["secretKeyRef"]["name"]
    ]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    # The Lease is free again, and its times have six fractional digits.
    spec = lease(rbac)["spec"]  # type: ignore[index]
    assert "holderIdentity" not in spec
    assert MICRO.match(spec["acquireTime"]) and MICRO.match(spec["renewTime"])


def test_the_first_pod_fails_and_the_next_one_succeeds(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    # A sequence survives the rollback of the failed attempt: the first try fails, the
    # second passes. The Job replaces the failed pod; the CLI follows the new one.
    postgres_db.query("CREATE SEQUENCE attempts")
    migrations = tree(
        tmp_path,
        {
            "app/002_flaky.up.sql": """
                CREATE TABLE flaky (id INT);
                DO $$ BEGIN
                  IF nextval('attempts') = 1 THEN RAISE EXCEPTION 'first attempt fails'; END IF;
                END $$;
            """
        },
    )
    result = as_job(rbac, "apply", migrations, "--url", postgres_db.url, "--backoff-limit", "2")
    assert result.returncode == 0, result.stderr
    assert len(pods(rbac)) == 2
    first, second = pod_named_by_phase(rbac, "Failed"), pod_named_by_phase(rbac, "Succeeded")
    assert f"pod {first} failed (exit code 1, Error)" in result.stderr
    assert "first attempt fails" in result.stderr
    assert f"pod {second} succeeded" in result.stderr
    # The second pod applied only what the first left undone.
    assert f"[{second}] app: applying 002_flaky.up.sql ... applied" in result.stderr
    assert f"[{second}] app: applying 001_init" not in result.stderr
    assert "Applied 1 migration in 1 set" in result.stdout
    assert [r[:2] for r in postgres_db.tracking("app")] == [(1, "applied"), (2, "applied")]


def test_backoff_limit_exceeded_fails_with_the_pods_error_and_releases_the_lease(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    migrations = tree(tmp_path, {"app/002_bad.up.sql": "ALTER TABLE nowhere ADD x INT;"})
    result = as_job(
        rbac, "apply", migrations, "--url", postgres_db.url, "--backoff-limit=1", "-o", "json"
    )
    assert result.returncode == 12, result.stderr
    names = [p["metadata"]["name"] for p in pods(rbac)]
    assert len(names) == 2
    assert all(f"pod {n} failed (exit code 1, Error)" in result.stderr for n in names)
    assert "BackoffLimitExceeded" in result.stderr
    assert 'relation "nowhere" does not exist' in result.stderr
    # -o json: the failing pod's own document, as a local run prints it.
    doc = json.loads(result.stdout)
    assert doc["error"]["exit_code"] == 1 and doc["error"]["file"] == "002_bad.up.sql"
    assert [m["file"] for m in doc["migrations"]] == []  # 001 was applied by the first pod
    # Released after each failed migration: the second pod did not wait for expiry.
    assert all(f'[{n}] released the Lease "{LEASE}"' in result.stderr for n in names)
    assert "waiting for the Lease" not in result.stderr
    assert "holderIdentity" not in lease(rbac)["spec"]  # type: ignore[index]


def test_a_bad_image_ends_at_the_timeout(rbac: Any, tmp_path: Path) -> None:
    result = run_cli(
        "migrations", "apply", str(tree(tmp_path)), "--as-k8s-job",
        f"--kubeconfig={rbac.kubeconfig}", "--image=registry.invalid/nope:1", "--timeout=3",
        "--url", "postgresql://postgres@127.0.0.1/x",
    )  # fmt: skip
    assert result.returncode == 13, result.stderr
    assert "is Pending: ErrImagePull" in result.stderr or "ImagePullBackOff" in result.stderr
    assert "timed out after 3 s" in result.stderr
    assert "ImagePullBackOff" in result.stderr.splitlines()[-1]
    # The Job is deleted with its pods, so it cannot run later, unobserved.
    rbac.wait_for("the Job to go", lambda: not rbac.objects("jobs"))
    rbac.wait_for("its pods to go", lambda: not rbac.objects("pods"))


def test_two_jobs_at_once_one_waits_for_the_lease_and_finds_nothing_to_do(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    migrations = tree(tmp_path, {"app/002_slow.up.sql": "SELECT pg_sleep(3);"})
    argv = job_argv(rbac, "apply", migrations, "--url", postgres_db.url)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env) for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    reports = sorted(out.splitlines()[-1] for out, _ in outputs)
    assert reports[0].startswith("Applied 2 migrations in 1 set"), outputs
    assert reports[1] == "Nothing to apply: every set is up to date.", outputs
    waited = [err for _, err in outputs if "waiting for the Lease" in err]
    assert len(waited) == 1, outputs
    assert re.search(
        r"waiting for the Lease \"migration-job-lock\" \(held by whimbrel-apply-", waited[0]
    )
    assert [r[:2] for r in postgres_db.tracking("app")] == [(1, "applied"), (2, "applied")]


def test_a_lease_held_by_a_dead_holder_is_taken_over_when_it_expires(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    status, body = rbac.api(
        "POST",
        LEASES,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE},
            "spec": {"holderIdentity": "crashed-pod-x1", "leaseDurationSeconds": 4,
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 4},
        },
    )  # fmt: skip
    assert status == 201, body
    result = as_job(rbac, "apply", tree(tmp_path), "--url", postgres_db.url)
    assert result.returncode == 0, result.stderr
    assert "(held by crashed-pod-x1)" in result.stderr
    assert "Applied 1 migration" in result.stdout
    spec = lease(rbac)["spec"]  # type: ignore[index]
    assert spec["leaseTransitions"] == 5 and "holderIdentity" not in spec


def test_a_service_account_without_the_lease_permission_is_a_clear_error(
    cluster: Any, postgres_db: Database, tmp_path: Path
) -> None:
    install(cluster, kinds=("ServiceAccount",))  # no Role, no RoleBinding
    result = as_job(cluster, "apply", tree(tmp_path), "--url", postgres_db.url, "--backoff-limit=0")
    assert result.returncode == 12, result.stderr
    assert re.search(
        r'cannot read the Lease "migration-job-lock" in namespace "default": 403 Forbidden: '
        r'.*User "system:serviceaccount:default:whimbrel-migrations" cannot get resource '
        r'"leases" in API group "coordination.k8s.io"',
        result.stderr,
    ), result.stderr
    assert "whimbrel k8s manifests" in result.stderr
    (pod,) = pods(cluster)
    assert f"pod {pod['metadata']['name']} failed (exit code 14, Error)" in result.stderr
    assert "things" not in postgres_db.tables()  # the database was not touched


def test_equals_forms_url_secret_and_inspect_as_json(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    import base64

    status, body = rbac.api(
        "POST", f"/api/v1/namespaces/{NS}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-db"},
         "data": {"dsn": base64.b64encode(postgres_db.url.encode()).decode()}},
    )  # fmt: skip
    assert status == 201, body
    migrations = tree(tmp_path)
    result = run_cli(
        "migrations", "inspect", str(migrations), "--as-k8s-job", f"--kubeconfig={rbac.kubeconfig}",
        f"--image={IMAGE}", "--namespace=default", "--context=emulator", "--url-secret=app-db:dsn",
        "--timeout=60", "--backoff-limit=0", "--label=team=db", "--set=app", "--output=json",
        "--service-account=whimbrel-migrations", "--ttl-seconds-after-finished=30",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # pending, as a local inspect says
    doc = json.loads(result.stdout)
    assert [(m["version"], m["status"]) for m in doc["sets"][0]["migrations"]] == [("1", "pending")]
    (job,) = rbac.objects("jobs")
    assert job["metadata"]["labels"]["team"] == "db"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 30
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [
        "migrations", "inspect", "--set", "app", "--output", "json", "--in-cluster",
        str(migrations),
    ]  # fmt: skip
    assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "app-db", "key": "dsn"}
    assert [s["metadata"]["name"] for s in rbac.objects("secrets")] == ["app-db"]  # none made
    assert lease(rbac) is None  # inspect only reads: no Lease, as no database lock


def test_ctrl_c_deletes_the_job_and_its_pods(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    migrations = tree(tmp_path, {"app/002_slow.up.sql": "SELECT pg_sleep(60);"})
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    run = subprocess.Popen(
        job_argv(rbac, "apply", migrations, "--url", postgres_db.url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    sleeping = (
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' "
        "AND pid <> pg_backend_pid() AND datname = current_database()"
    )
    rbac.wait_for(
        "the pod's slow migration to run", lambda: postgres_db.query(sleeping)[0][0], timeout=30
    )
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 130, stderr
    assert "deleted the Job" in stderr
    rbac.wait_for("the Job to go", lambda: not rbac.objects("jobs"))
    rbac.wait_for("its pods to go", lambda: not rbac.objects("pods"))
    rbac.wait_for("the pod's process to end", lambda: not list(rbac.pod_processes()))
    # The pod was stopped cleanly: nothing of the slow migration is recorded.
    assert [r[:2] for r in postgres_db.tracking("app")] == [(1, "applied")]


@pytest.mark.parametrize(
    ("signal_number", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
)
def test_ctrl_c_while_the_job_is_created_waits_for_the_api_then_deletes_the_job(
    rbac: Any, postgres_db: Database, tmp_path: Path, signal_number: int, exit_code: int
) -> None:
    from torture_support import read_until

    # The API server is slow to answer the Job's creation: a request cut off there could
    # still create it after whimbrel had looked for it, leaving it to run unfollowed.
    hold = rbac.hold("POST", "/jobs")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    run = subprocess.Popen(
        job_argv(rbac, "apply", tree(tmp_path), "--url", postgres_db.url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert hold.arrived.wait(30), "the Job's creation never reached the API server"
        run.send_signal(signal_number)
        seen = read_until(run.stderr, "stopping once the API server has answered")
    finally:
        hold.release()
    _, rest = run.communicate(timeout=30)
    stderr = seen + rest
    assert run.returncode == exit_code, stderr
    assert re.search(r'deleted the Job "whimbrel-apply-[a-z0-9]+" and its pods', stderr), stderr
    rbac.wait_for("the Job to go", lambda: not rbac.objects("jobs"))
    rbac.wait_for("its Secret to go", lambda: not rbac.objects("secrets"))
    rbac.wait_for("its pods to go", lambda: not rbac.objects("pods"))
    rbac.wait_for("their processes to end", lambda: not list(rbac.pod_processes()))


def test_a_pod_waiting_for_its_secret_is_reported_and_followed_once_it_starts(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    import base64

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    run = subprocess.Popen(
        job_argv(rbac, "apply", tree(tmp_path), "--url-secret", "late-db"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip

    def waiting_for_secret() -> bool:
        return any(
            status.get("state", {}).get("waiting", {}).get("reason") == "CreateContainerConfigError"
            for pod in rbac.objects("pods")
            for status in pod.get("status", {}).get("containerStatuses", [])
        )

    rbac.wait_for("the pod to wait for its Secret", waiting_for_secret, timeout=20)
    status, body = rbac.api(
        "POST", f"/api/v1/namespaces/{NS}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late-db"},
         "data": {"url": base64.b64encode(postgres_db.url.encode()).decode()}},
    )  # fmt: skip
    assert status == 201, body
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert 'is Pending: CreateContainerConfigError: secret "late-db" not found' in stderr
    assert "app: applying 001_init.up.sql ... applied" in stderr
    assert "Applied 1 migration in 1 set" in stdout


def test_a_refusal_no_retry_can_fix_fails_the_job_at_once(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    migrations = tree(tmp_path)
    local = run_cli("migrations", "apply", str(migrations), "--url", postgres_db.url)
    assert local.returncode == 0, local.stderr
    (migrations / "app/001_init.up.sql").write_text("CREATE TABLE things (id BIGINT);")
    result = as_job(rbac, "apply", migrations, "--url", postgres_db.url, "--backoff-limit=3")
    assert result.returncode == 12, result.stderr
    (pod,) = pods(rbac)  # podFailurePolicy: exit 8 (refused: drift) is not retried
    assert f"pod {pod['metadata']['name']} failed (exit code 8, Error)" in result.stderr
    assert "PodFailurePolicy" in result.stderr
    last = result.stderr.splitlines()
    assert "001_init.up.sql was modified after it was applied" in last[-1], result.stderr


def _operator_kubeconfig(cluster: Any, tmp_path: Path, rules: list[dict[str, Any]]) -> Path:
    """A kubeconfig for a user (a service account here) allowed only `rules`."""
    for path, doc in (
        (_PATHS["ServiceAccount"],
         {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator"}}),
        (_PATHS["Role"],
         {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
          "metadata": {"name": "operator"}, "rules": rules}),
        (_PATHS["RoleBinding"],
         {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
          "metadata": {"name": "operator"},
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator"},
          "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": NS}]}),
    ):  # fmt: skip
        status, body = cluster.api("POST", path.format(ns=NS), doc)
        assert status == 201, body
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config["users"][0]["user"] = {"token": cluster.service_account_token(NS, "operator")}
    path = tmp_path / "operator-kubeconfig"
    path.write_text(json.dumps(config))
    return path


# What the README says the operator needs, and nothing more.
OPERATOR_RULES = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
]


def test_the_operator_needs_only_the_documented_permissions(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    kubeconfig = _operator_kubeconfig(rbac, tmp_path, OPERATOR_RULES)
    result = run_cli(
        "migrations", "apply", str(tree(tmp_path)), "--as-k8s-job", f"--kubeconfig={kubeconfig}",
        f"--image={IMAGE}", "--url", postgres_db.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Applied 1 migration" in result.stdout


def test_an_operator_who_cannot_follow_gets_a_clear_error_and_no_job_left(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    rules = [r for r in OPERATOR_RULES if r["resources"] != ["pods"]]
    kubeconfig = _operator_kubeconfig(rbac, tmp_path, rules)
    result = run_cli(
        "migrations", "apply", str(tree(tmp_path)), "--as-k8s-job", f"--kubeconfig={kubeconfig}",
        f"--image={IMAGE}", "--url", postgres_db.url, "--timeout=30",
    )  # fmt: skip
    assert result.returncode == 14, result.stderr
    assert 'cannot list the pods of the Job "whimbrel-apply-' in result.stderr
    assert 'cannot list resource "pods"' in result.stderr
    assert "deleted the Job" in result.stderr
    rbac.wait_for("the Job to go", lambda: not rbac.objects("jobs"))


def test_an_image_that_prints_no_result_line_is_a_warning(rbac: Any, tmp_path: Path) -> None:
    rbac.register_image("echo:1", ["echo"])  # not whimbrel: prints its arguments, exits 0
    migrations = tree(tmp_path)
    result = run_cli(
        "migrations", "apply", str(migrations), "--as-k8s-job", f"--kubeconfig={rbac.kubeconfig}",
        "--image=echo:1", "--url=postgresql://postgres@127.0.0.1/none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (pod,) = (p["metadata"]["name"] for p in pods(rbac))
    assert f"[{pod}] migrations apply --in-cluster {migrations}" in result.stderr
    assert "without a WHIMBREL-RESULT line" in result.stderr
    assert result.stdout == ""


def test_a_log_stream_that_ends_early_is_reopened_without_repeating_lines(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    migrations = tree(tmp_path, {"app/002_slow.up.sql": "SELECT pg_sleep(3);"})
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    run = subprocess.Popen(
        job_argv(rbac, "apply", migrations, "--url", postgres_db.url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    sleeping = (
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' "
        "AND pid <> pg_backend_pid() AND datname = current_database()"
    )
    rbac.wait_for("the slow migration to run", lambda: postgres_db.query(sleeping)[0][0], 30)
    # The CLI's stream of the running pod ends, as on an API server restart.
    assert rbac.drop_log_streams() >= 1
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    (pod,) = (p["metadata"]["name"] for p in pods(rbac))
    for line in (
        f'[{pod}] holding the Lease "{LEASE}"',
        f"[{pod}] app: applying 001_init.up.sql ... applied in",
        f"[{pod}] app: applying 002_slow.up.sql ... applied in",
        f'[{pod}] released the Lease "{LEASE}"',
    ):
        assert stderr.count(line) == 1, (line, stderr)
    assert "Applied 2 migrations in 1 set" in stdout


def test_revert_through_a_job_reports_as_json(
    rbac: Any, postgres_db: Database, tmp_path: Path
) -> None:
    migrations = tree(
        tmp_path,
        {
            "app/002_more.up.sql": "ALTER TABLE things ADD name TEXT;",
            "app/002_more.down.sql": "ALTER TABLE things DROP name;",
        },
    )
    local = run_cli("migrations", "apply", str(migrations), "--url", postgres_db.url)
    assert local.returncode == 0, local.stderr
    result = as_job(rbac, "revert", migrations, "--url", postgres_db.url, "--steps=1", "-ojson")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["command"] == "revert"
    assert [(m["file"], m["direction"], m["status"]) for m in doc["migrations"]] == [
        ("002_more.down.sql", "down", "reverted")
    ]
    assert [r[:2] for r in postgres_db.tracking("app")] == [(1, "applied")]

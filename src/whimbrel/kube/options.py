"""The Kubernetes options of `migrations inspect|apply|revert|mark`, and their dispatch.

No Kubernetes client is imported here: the client loads only when --as-k8s-job or
--in-cluster is used, so `whimbrel --help` and local runs stay fast.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from whimbrel import kube
from whimbrel.errors import UsageError
from whimbrel.urls import DatabaseURL, redact

if TYPE_CHECKING:
    from lightkube import Client

    from whimbrel.kube.manifests import JobSettings

F = TypeVar("F", bound=Callable[..., Any])

# Options the operator's CLI consumes; the Job's command never gets them.
CLIENT_PARAMS = (
    "as_k8s_job",
    "kubeconfig",
    "kube_context",
    "namespace",
    "image",
    "service_account",
    "backoff_limit",
    "ttl_seconds_after_finished",
    "labels",
    "url_secret",
    "timeout",
)
ALL_PARAMS = (*CLIENT_PARAMS, "in_cluster", "lease_name")
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)

KUBE_HELP = f"""\b
Kubernetes:
  --as-k8s-job runs the same command in a Job in the cluster (the pod gets --in-cluster and
  the database URL from a Secret) and follows its pods. PATH is a path inside the image.
  --image defaults to ${kube.IMAGE_ENV}. `whimbrel k8s manifests` prints the RBAC the Job
  needs. See the README, section Kubernetes.
"""


class KubeCommand(click.Command):
    """A command whose help lists the Kubernetes options in a section of their own."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        local: list[tuple[str, str]] = []
        kube_records: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue
            (kube_records if param.name in ALL_PARAMS else local).append(record)
        for title, records in (("Options", local), ("Kubernetes options", kube_records)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


def _options(own_dry_run: bool) -> list[Callable[[F], F]]:
    opts: list[Callable[[F], F]] = [
        click.option(
            "--as-k8s-job",
            is_flag=True,
            help="Run this command as a Kubernetes Job in the cluster and follow it.",
        ),
        click.option(
            "--kubeconfig",
            metavar="FILE",
            help=(
                "kubeconfig file (default: the files of $KUBECONFIG, merged as kubectl "
                "merges them; then ~/.kube/config)."
            ),
        ),
        click.option("--context", "kube_context", metavar="NAME", help="kubeconfig context."),
        click.option(
            "--namespace",
            metavar="NAME",
            help="Namespace of the Job (default: the context's namespace).",
        ),
        click.option(
            "--image",
            envvar=kube.IMAGE_ENV,
            metavar="IMAGE",
            help=f"Image with whimbrel and the migrations (default: ${kube.IMAGE_ENV}).",
        ),
        click.option(
            "--service-account",
            default=kube.DEFAULT_SERVICE_ACCOUNT,
            show_default=True,
            metavar="NAME",
            help="Service account of the Job's pods (see `whimbrel k8s manifests`).",
        ),
        click.option(
            "--backoff-limit",
            type=click.IntRange(min=0),
            default=kube.DEFAULT_BACKOFF_LIMIT,
            show_default=True,
            help="Failed pods the Job replaces before it fails.",
        ),
        click.option(
            "--ttl-seconds-after-finished",
            type=click.IntRange(min=0),
            default=kube.DEFAULT_TTL_SECONDS,
            show_default=True,
            help="Delete the finished Job (and its pods and Secret) after this long.",
        ),
        click.option(
            "--label",
            "labels",
            multiple=True,
            metavar="KEY=VALUE",
            help="Label for the Job and its pods (repeatable).",
        ),
        click.option(
            "--url-secret",
            metavar="NAME[:KEY]",
            help=f"Existing Secret (and key, default {kube.DEFAULT_SECRET_KEY!r}) holding "
            "the database URL. Without it, whimbrel creates a Secret owned by the Job.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=1),
            default=kube.DEFAULT_TIMEOUT,
            show_default=True,
            help="Seconds to wait for a pod of the Job to succeed (then exit 13).",
        ),
        click.option(
            "--in-cluster",
            is_flag=True,
            help="Inside the Job's pod: hold the Lease while running (set by --as-k8s-job).",
        ),
        click.option(
            "--lease-name",
            default=kube.DEFAULT_LEASE_NAME,
            show_default=True,
            metavar="NAME",
            help="The Lease that lets one migration pod run at a time.",
        ),
    ]
    if own_dry_run:
        opts.append(
            click.option(
                "--dry-run",
                is_flag=True,
                help="With --as-k8s-job: print the Job and Secret as YAML; create nothing.",
            )
        )
    return opts


def kube_options(
    command: str,
    *,
    own_dry_run: bool,
    parse: Callable[[str | None], DatabaseURL],
    secrets: Callable[[], list[str]],
) -> Callable[[F], F]:
    """Add the Kubernetes options to a command and route --as-k8s-job / --in-cluster.

    Put it below the other option decorators: the wrapper takes whatever they add.
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(**kwargs: Any) -> None:
            ctx = click.get_current_context()
            k8s = {name: kwargs.pop(name) for name in ALL_PARAMS}
            dry_run = bool(kwargs.pop("dry_run") if own_dry_run else kwargs.get("dry_run"))
            if k8s["as_k8s_job"]:
                if k8s["in_cluster"]:
                    raise UsageError("--as-k8s-job and --in-cluster exclude each other")
                _as_job(ctx, command, k8s, dry_run, parse, secrets)
                return
            _reject_client_options(ctx)
            if own_dry_run and dry_run:
                raise UsageError(f"{command} --dry-run goes with --as-k8s-job only")
            if k8s["in_cluster"]:
                from whimbrel.kube import incluster

                incluster.run(
                    command,
                    lambda: f(**kwargs),
                    lease_name=k8s["lease_name"],
                    lock_timeout=float(kwargs.get("lock_timeout", 60.0)),
                    secrets=secrets,
                )
                return
            if ctx.get_parameter_source("lease_name") == ParameterSource.COMMANDLINE:
                raise UsageError("--lease-name goes with --as-k8s-job or --in-cluster only")
            f(**kwargs)

        # Reversed: click lists a command's options in the reverse order they were added.
        for option in reversed(_options(own_dry_run)):
            wrapper = option(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate


def _reject_client_options(ctx: click.Context) -> None:
    for name in CLIENT_PARAMS:
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            raise UsageError(f"{_flag(ctx, name)} goes with --as-k8s-job only")


def _flag(ctx: click.Context, name: str) -> str:
    for param in ctx.command.params:
        if param.name == name and isinstance(param, click.Option):
            return max(param.opts, key=len)
    return name


def in_cluster_argv(ctx: click.Context, drop: set[str]) -> list[str]:
    """The command line for the Job's pod, rebuilt from what click parsed.

    Rebuilt from the parsed values, not edited from sys.argv, so every way of writing an
    option (`--opt value`, `--opt=value`, `-o json`, `-ojson`) comes out the same, and
    options left at their defaults stay out (the pod's defaults are the same).
    """
    path: list[str] = []
    node: click.Context | None = ctx
    while node is not None and node.parent is not None:  # the root is the program name
        path.insert(0, node.info_name or "")
        node = node.parent
    options: list[str] = []
    arguments: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in drop or ctx.get_parameter_source(name) not in _GIVEN:
            continue
        value = ctx.params.get(name)
        if isinstance(param, click.Argument):
            values = value if isinstance(value, (list, tuple)) else [value]
            arguments += [str(v) for v in values if v is not None]
            continue
        if not isinstance(param, click.Option) or value is None:
            continue
        flag = max((o for o in param.opts if o.startswith("--")), key=len, default=param.opts[0])
        if param.is_flag:
            if param.secondary_opts:  # --applied/--not-applied
                options.append(flag if value else max(param.secondary_opts, key=len))
            elif value:
                options.append(flag)
        elif param.multiple:
            for item in value:
                options += [flag, str(item)]
        else:
            options += [flag, str(value)]
    # "--" keeps a PATH that starts with "-" from being read as an option.
    tail = ["--", *arguments] if any(a.startswith("-") for a in arguments) else arguments
    return [*path, *options, "--in-cluster", *tail]


def _as_job(
    ctx: click.Context,
    command: str,
    k8s: dict[str, Any],
    dry_run: bool,
    parse: Callable[[str | None], DatabaseURL],
    secrets: Callable[[], list[str]],
) -> None:
    from whimbrel.kube import manifests

    image = k8s["image"]
    if not image:
        raise UsageError(f"--as-k8s-job needs --image (or ${kube.IMAGE_ENV})")
    url: str | None = ctx.params.get("url")
    url_given = ctx.get_parameter_source("url") == ParameterSource.COMMANDLINE
    if k8s["url_secret"]:
        if url_given:
            raise UsageError("give --url or --url-secret, not both")
        secret_name, secret_key = manifests.parse_url_secret(k8s["url_secret"])
        url = None
    else:
        if not url:
            raise UsageError(
                "no database URL: pass --url, set DATABASE_URL, or name a Secret holding it "
                "with --url-secret NAME[:KEY]"
            )
        parse(url)  # a bad URL fails here, before anything is created
        secret_name, secret_key = "", kube.DEFAULT_SECRET_KEY
    labels = manifests.parse_labels(k8s["labels"])
    manifests.check_name(k8s["service_account"], "--service-account")
    if k8s["namespace"]:
        manifests.check_name(k8s["namespace"], "--namespace")
    drop = {*CLIENT_PARAMS, "url", "dry_run", "in_cluster"}
    args = in_cluster_argv(ctx, drop)
    name = manifests.unique_job_name(command)

    client = None
    namespace = k8s["namespace"]
    if not (dry_run and namespace):
        from whimbrel.kube import api

        client, namespace = api.from_kubeconfig(k8s["kubeconfig"], k8s["kube_context"], namespace)
    settings = manifests.JobSettings(
        name=name,
        namespace=namespace,
        command=command,
        image=image,
        args=args,
        service_account=k8s["service_account"],
        backoff_limit=k8s["backoff_limit"],
        ttl_seconds_after_finished=k8s["ttl_seconds_after_finished"],
        secret_name=secret_name or name,
        secret_key=secret_key,
        labels=labels,
    )
    if dry_run:
        docs = [manifests.job_manifest(settings)]
        header = f"whimbrel {' '.join(args)}: dry run, nothing was created."
        if url is not None:
            docs.append(manifests.secret_manifest(settings, redact(url, secrets()), None))
            header += (
                "\nThe Secret's URL has its password masked here; whimbrel creates it after"
                "\nthe Job, owned by it (ownerReferences), so it goes when the Job goes."
            )
        click.echo(manifests.to_yaml(docs, header), nl=False)
        return
    assert client is not None
    _run_job(client, settings, url, k8s["timeout"], secrets)


def _run_job(
    client: Client,
    settings: JobSettings,
    url: str | None,
    timeout: float,
    secrets: Callable[[], list[str]],
) -> None:
    from whimbrel.errors import JobFailed, JobTimeout, KubeError
    from whimbrel.kube import job as jobs
    from whimbrel.kube.manifests import unique_job_name
    from whimbrel.kube.result import PodResult

    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            click.echo(redact(line, secrets()), err=True)

    created = None
    attempted = [settings.name]

    def on_first_signal() -> None:
        emit(f'stopping once the API server has answered the creation of the Job "{attempted[-1]}"')

    try:
        with jobs.interrupts_held(on_first_signal):
            created = jobs.create(
                client,
                settings,
                url,
                lambda: unique_job_name(settings.command),
                attempting=attempted.append,
            )
        emit(
            f'created Job "{created.name}" in namespace "{created.namespace}" '
            f"(image {settings.image}); following its pods for up to {timeout:g} s"
        )
        result = jobs.Follower(client, created, timeout, emit).run()
    except KeyboardInterrupt:
        # Its Secret names the Job as owner, so it goes with the Job. Stopped twice while
        # creating it, the Job may exist or still be about to: delete it by name.
        target = created or jobs.CreatedJob(attempted[-1], settings.namespace, "")
        outcome = jobs.delete(client, target)
        if outcome:
            emit(f'deleted the Job "{target.name}" and its pods')
        elif outcome is False or created is None:
            emit(
                f'could not make sure the Job "{target.name}" is gone: check with '
                f"kubectl get job {target.name} -n {target.namespace}, and delete it"
            )
        raise
    except (JobTimeout, KubeError) as exc:
        if created is None:
            raise
        # Nobody would see what it does next: a run reported as failed must stop.
        outcome = jobs.delete(client, created)
        if outcome is not None:
            exc.message += (
                f'; deleted the Job "{created.name}" and its pods'
                if outcome
                else f'; could not delete the Job "{created.name}": delete it with kubectl'
            )
        raise
    except JobFailed as exc:
        partial = exc.partial
        if isinstance(partial, PodResult) and partial.stdout:
            click.echo(redact(partial.stdout, secrets()), nl=False)
        raise
    click.echo(redact(result.stdout, secrets()), nl=False)
    if result.error:
        click.echo(redact(result.error, secrets()), err=True)
    sys.exit(result.exit_code)

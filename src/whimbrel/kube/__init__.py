"""Running whimbrel as a Kubernetes Job (`--as-k8s-job`) and inside one (`--in-cluster`).

Modules:

- `options`: the click options, the argv of the in-cluster command, dispatch. Imports no
  Kubernetes client: `whimbrel --help` and local runs never load lightkube.
- `manifests`: the Job, Secret, ServiceAccount, Role and RoleBinding as plain dicts.
- `result`: the one machine-readable line a pod ends its log with.
- `api`: lightkube clients (kubeconfig or service account) and API errors as WhimbrelErrors.
- `lease`: the `migration-job-lock` Lease, acquired with optimistic concurrency.
- `job`: create the Job (and its Secret), follow its pods, stream their logs.
- `incluster`: the pod's side: take the Lease, run the command, print the result line.
"""

from __future__ import annotations

DEFAULT_SERVICE_ACCOUNT = "whimbrel-migrations"
DEFAULT_ROLE_NAME = "whimbrel-migrations"  # of the Role and RoleBinding
DEFAULT_LEASE_NAME = "migration-job-lock"
DEFAULT_TIMEOUT = 120.0
DEFAULT_BACKOFF_LIMIT = 3
DEFAULT_TTL_SECONDS = 3600
# The key of the Secret the CLI creates, and the default key of --url-secret NAME.
DEFAULT_SECRET_KEY = "url"
# The documented override of the service-account folder (tests; a real kubelet never sets it).
SERVICEACCOUNT_DIR_ENV = "WHIMBREL_SERVICEACCOUNT_DIR"
SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
IMAGE_ENV = "WHIMBREL_IMAGE"

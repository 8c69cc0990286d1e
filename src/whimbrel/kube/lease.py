"""The `migration-job-lock` Lease: one migration pod at a time per namespace.

Optimistic concurrency on a coordination.k8s.io/v1 Lease, not a client library's
leader-election loop (those renew forever and never release):

- absent: create it holding it; 409 AlreadyExists means another pod created it first;
- free (no holder) or expired (renewTime + leaseDurationSeconds in the past): take it
  over with a PUT carrying the resourceVersion read; 409 Conflict means another pod won;
- held: wait, saying who holds it, until the timeout;
- while the migrations run, a thread renews it every LEASE_DURATION / 3 seconds;
- at the end, success or failure, release it by clearing holderIdentity (a PUT with the
  resourceVersion of our last write).

The Lease is handled as a plain dict (a lightkube generic resource) so that acquireTime
and renewTime are sent exactly as written here: RFC 3339 with six fractional digits, the
only form the API server's MicroTime accepts. A datetime in lightkube's typed model is
encoded without the fraction when its microseconds are 0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from lightkube import ApiError, Client
from lightkube.generic_resource import GenericNamespacedResource, create_api_info

from whimbrel.errors import LockTimeout
from whimbrel.kube import api

# A holder that stops renewing (killed pod, lost node) loses the Lease after this long.
LEASE_DURATION_SECONDS = 15
# Renewing three times per duration survives two lost renewals.
RENEW_INTERVAL_SECONDS = LEASE_DURATION_SECONDS / 3
# How often a waiting pod re-reads a held Lease.
POLL_SECONDS = 1.0


class _Lease(GenericNamespacedResource):
    # Not registered in lightkube's registry, so it never shadows the typed Lease model.
    _api_info = create_api_info(
        "coordination.k8s.io", "v1", "Lease", "leases", verbs=["get", "post", "put"]
    )


def micro_time(moment: datetime) -> str:
    """RFC 3339 in UTC with exactly six fractional digits: `2024-01-01T00:00:00.000000Z`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # strftime's %f always has six digits; isoformat() drops them when microseconds are 0.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    """An RFC 3339 time as the API server writes it (with or without a fraction)."""
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if "." in text:
        head, _, rest = text.partition(".")
        zone_at = next((i for i, c in enumerate(rest) if not c.isdigit()), len(rest))
        digits, zone = rest[:zone_at], rest[zone_at:]
        text = f"{head}.{(digits + '000000')[:6]}{zone}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def holder_of(lease: dict[str, Any]) -> str | None:
    holder = (lease.get("spec") or {}).get("holderIdentity")
    return holder or None


def expired(lease: dict[str, Any], now: datetime) -> bool:
    """Held, but its holder has not renewed it within its leaseDurationSeconds."""
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not renewed:
        return True
    try:
        last = parse_time(str(renewed))
    except ValueError:
        return True  # unreadable: nobody can be relying on it
    duration = spec.get("leaseDurationSeconds") or LEASE_DURATION_SECONDS
    return bool(now >= last + timedelta(seconds=int(duration)))


class LeaseLock:
    """Acquire, renew and release one Lease in one namespace, as one holder (the pod name)."""

    def __init__(
        self,
        client: Client,
        name: str,
        namespace: str,
        holder: str,
        *,
        duration: int = LEASE_DURATION_SECONDS,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self.holder = holder
        self.duration = duration
        self.now = now
        self._lease: dict[str, Any] | None = None  # as of our last successful write
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost: str | None = None  # why the renewer stopped holding it, if it did

    # -- requests ------------------------------------------------------------------
    def _what(self) -> str:
        return f'Lease "{self.name}" in namespace "{self.namespace}"'

    def _get(self) -> dict[str, Any] | None:
        try:
            return dict(self.client.get(_Lease, self.name, namespace=self.namespace))
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            api.fail(f"cannot read the {self._what()}", exc)
        except Exception as exc:
            api.fail(f"cannot read the {self._what()}", exc)

    def _spec(self, acquired: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration,
            "acquireTime": acquired,
            "renewTime": micro_time(self.now()),
            "leaseTransitions": transitions,
        }

    def _create(self) -> bool:
        now = micro_time(self.now())
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec(now, 0),
        }
        try:
            self._lease = dict(self.client.create(_Lease.from_dict(body), namespace=self.namespace))
        except ApiError as exc:
            if exc.status.code == 409:
                return False  # AlreadyExists: another pod created it first
            api.fail(f"cannot create the {self._what()}", exc)
        except Exception as exc:
            api.fail(f"cannot create the {self._what()}", exc)
        return True

    def _put(self, lease: dict[str, Any], spec: dict[str, Any], action: str) -> bool:
        """Replace the Lease read as `lease` (its resourceVersion guards the write)."""
        metadata = lease.get("metadata") or {}
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": metadata.get("resourceVersion"),
                **({"labels": metadata["labels"]} if metadata.get("labels") else {}),
                **({"annotations": metadata["annotations"]} if metadata.get("annotations") else {}),
            },
            "spec": spec,
        }
        try:
            self._lease = dict(self.client.replace(_Lease.from_dict(body)))
        except ApiError as exc:
            if exc.status.code in (409, 404):
                return False  # Conflict: it changed since we read it (or went away)
            api.fail(f"cannot {action} the {self._what()}", exc)
        except Exception as exc:
            api.fail(f"cannot {action} the {self._what()}", exc)
        return True

    # -- the protocol -----------------------------------------------------------------
    def acquire(self, timeout: float, waiting: Callable[[str], None] | None = None) -> None:
        """Hold the Lease, or raise LockTimeout (naming the holder) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        reported: str | None = None
        while True:
            lease = self._get()
            if lease is None:
                if self._create():
                    return
                continue  # someone created it between our read and our create: read it
            holder = holder_of(lease)
            spec = lease.get("spec") or {}
            if holder is None or holder == self.holder or expired(lease, self.now()):
                transitions = int(spec.get("leaseTransitions") or 0)
                if holder != self.holder:
                    transitions += 1
                acquired = micro_time(self.now())
                if self._put(lease, self._spec(acquired, transitions), "take over"):
                    return
                continue  # 409: another pod took it first; read again
            if holder != reported and waiting is not None:
                waiting(holder)
                reported = holder
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"timed out after {timeout:g} s waiting for the {self._what()}, "
                    f"held by {holder} (it expires {spec.get('leaseDurationSeconds')} s after "
                    f"its last renewal, {spec.get('renewTime')})"
                )
            time.sleep(min(POLL_SECONDS, max(0.05, deadline - time.monotonic())))

    def renew(self) -> bool:
        """Extend our hold by one duration; False if another pod holds it now."""
        with self._write_lock:
            current = self._lease
            if current is None:
                return False
            spec = dict(current.get("spec") or {})
            spec["renewTime"] = micro_time(self.now())
            if self._put(current, spec, "renew"):
                return True
            fresh = self._get()  # 409: read it; we may still hold it (e.g. a label changed)
            if fresh is not None and holder_of(fresh) == self.holder:
                return self._put(fresh, {**(fresh.get("spec") or {}), **spec}, "renew")
            self.lost = f"now held by {holder_of(fresh) if fresh else 'nobody (deleted)'}"
            self._lease = None
            return False

    def release(self) -> None:
        """Clear holderIdentity, if we still hold it, so the next pod need not wait."""
        self.stop_renewing()
        with self._write_lock:
            current = self._lease
            if current is None:
                return
            spec = dict(current.get("spec") or {})
            spec.pop("holderIdentity", None)
            spec["renewTime"] = micro_time(self.now())
            if not self._put(current, spec, "release"):
                fresh = self._get()
                if fresh is not None and holder_of(fresh) == self.holder:
                    self._put(fresh, {**(fresh.get("spec") or {}), **spec}, "release")
            self._lease = None

    def start_renewing(self, on_lost: Callable[[str], None] | None = None) -> None:
        def loop() -> None:
            while not self._stop.wait(
                RENEW_INTERVAL_SECONDS * self.duration / LEASE_DURATION_SECONDS
            ):
                try:
                    if not self.renew():
                        if on_lost is not None:
                            on_lost(self.lost or "lost")
                        return
                except Exception as exc:  # keep trying: the next renewal may get through
                    if on_lost is not None:
                        on_lost(f"renewal failed, will retry: {exc}")

        self._renewer = threading.Thread(target=loop, name="whimbrel-lease-renewer", daemon=True)
        self._renewer.start()

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=15)
            self._renewer = None

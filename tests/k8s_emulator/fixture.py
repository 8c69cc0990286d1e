"""The `k8s_cluster` pytest fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import EmulatedCluster


@pytest.fixture
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCluster]:
    """A fresh emulated cluster per test; teardown kills every pod process still running."""
    workdir: Path = tmp_path_factory.mktemp("k8s")
    cluster = EmulatedCluster(workdir)
    try:
        yield cluster
    finally:
        cluster.close()

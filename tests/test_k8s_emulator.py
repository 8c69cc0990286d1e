"""The Kubernetes API emulator itself, driven with the real lightkube client and raw requests."""

from __future__ import annotations

import sys

from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret

from k8s_emulator import EmulatedCluster


def client_for(cluster: EmulatedCluster) -> Client:
    return Client(KubeConfig.from_file(cluster.kubeconfig))


def test_fixture_serves_lightkube(k8s_cluster: EmulatedCluster) -> None:
    client = client_for(k8s_cluster)
    assert {"default", "kube-system"} <= {n.metadata.name for n in client.list(Namespace)}
    secret = client.create(Secret(metadata=ObjectMeta(name="db"), stringData={"url": "x"}))
    assert secret.data == {"url": "eA=="}
    assert sys.executable

"""A Kubernetes API server emulator for whimbrel's tests (see CONTRACT.md)."""

from .cluster import EmulatedCluster

__all__ = ["EmulatedCluster"]

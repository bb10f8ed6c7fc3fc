"""Connecting to Ray: an embedded local cluster on loopback unless an address names a cluster."""
from __future__ import annotations

import os


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """``ray.init`` once per process. ``address`` (or ``RAY_ADDRESS``) joins an existing cluster;
    otherwise a local cluster starts on 127.0.0.1. Its dashboard stays on (loopback only): Ray Train V2's
    controller watchdog queries actor state through it."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", log_to_driver=True)

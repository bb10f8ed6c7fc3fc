"""Connecting to Ray: an embedded local cluster on loopback unless an address names a cluster.

Token authentication is on for every Ray this package starts: the embedded cluster runs with
``RAY_AUTH_MODE=token`` (Ray's default for a cluster ``ray.init`` starts; it writes a token to
``~/.ray/auth_token`` if none exists) and its dashboard listens on 127.0.0.1 only. Joining a cluster uses the
caller's ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``, which a ``ray job submit`` driver
inherits from its node.
"""
from __future__ import annotations

import os


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """``ray.init`` once per process. ``address`` (or ``RAY_ADDRESS``) joins an existing cluster;
    otherwise a local cluster starts on 127.0.0.1. Its dashboard stays on (loopback only): Ray Train V2's
    controller watchdog queries actor state through it."""
    import ray

    if ray.is_initialized():
        return
    from ..data.storage import refuse_credentials
    from ..runtime.allocator import worker_env
    from . import logs  # Ray's own console output goes to its log files unless SEM_DIST_DEBUG / --verbose

    # every worker of this job (Train, Data, Tune, tasks) starts with this package's malloc settings
    runtime_env = {"env_vars": worker_env()}
    address = address or os.environ.get("RAY_ADDRESS")
    logs.before_init()
    if address:
        ray.init(address=refuse_credentials(address, "--address"), log_to_driver=logs.verbose(),
                 runtime_env=runtime_env)
    else:
        # RAY_AUTH_MODE unset: ray.init turns token auth on for the cluster it starts and creates the token
        # (enable_token_auth_by_default in Ray 2.60). Setting the variable here instead would come too late:
        # Ray reads it at import, and a GCS started in token mode without a token aborts.
        # address="local": always a new embedded cluster, never one a `ray start` on this machine left behind
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                 log_to_driver=logs.verbose(), runtime_env=runtime_env)
    logs.after_init()

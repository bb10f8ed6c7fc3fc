"""Checking that the Ray cluster can run a request before launching it, so an impossible request (GPUs the
cluster does not have, a worker larger than any node) fails within bounded time with a one-line reason
instead of Ray waiting forever for resources that never come.

An embedded cluster (this process started it with ``ray.init()``) never grows: the check is immediate.
On a real cluster the autoscaler may add nodes: the request is posted to it (``request_resources``) and
the check waits up to ``timeout_s`` for the capacity to appear. Capacity means the cluster's total
resources, not what is free right now: a request the cluster can hold waits its turn in Ray's queue.
"""
from __future__ import annotations

import math
import time

from ..engine.spec import DEFAULT_RESOURCE_TIMEOUT_S

RESOURCE_TIMEOUT_HELP = ("seconds to wait for a Ray cluster's autoscaler to add the CPUs/GPUs a run needs "
                         "before failing (default 600; an embedded local Ray fails at once)")


def _alive_nodes() -> list[dict]:
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def _units_that_fit(node: dict, unit: dict) -> float:
    """How many copies of ``unit`` one node holds (Ray packs a bundle onto a single node)."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in unit.items() if v > 0]
    return min(counts) if counts else math.inf


def _shortfall(cpus: float, gpus: float, units: int | None) -> str | None:
    """None if the alive nodes can hold the request, else what the cluster has (for the error)."""
    nodes = _alive_nodes()
    have_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    have_gpu = sum(n.get("GPU", 0.0) for n in nodes)
    has = f"the cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs on {len(nodes)} node(s)"
    if have_cpu + 1e-9 < cpus or have_gpu + 1e-9 < gpus:
        return has
    if units:
        unit = {"CPU": cpus / units, "GPU": gpus / units}
        if sum(_units_that_fit(n, unit) for n in nodes) < units:
            largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
            return (f"{has}, and no {units} node slot(s) of {unit['CPU']:g} CPU + {unit['GPU']:g} GPU each fit "
                    f"(largest node: {largest.get('CPU', 0.0):g} CPUs, {largest.get('GPU', 0.0):g} GPUs)")
    return None


def nodes_beyond_this() -> str | None:
    """Why work of this job may run on a node other than this driver's (completing "…, but {why} that must
    all see it"), or None when the connected cluster is one node that nothing can add to.

    The nodes alive now are not enough: an autoscaling cluster may start as its head alone. Ray 2.60 shows
    growth three ways, all read here: a platform reports its node groups with their max counts to the GCS
    (``get_cluster_config``, which Ray Train and Ray Data size themselves by); nodes that the v2 autoscaler
    (the cluster launcher's default) or KubeRay start carry their group in the ``ray.io/node-group`` label;
    the v1 autoscaler names the node types it manages in its status (a fixed cluster's read-only one names
    each node ``node_<id>``)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        return f"the Ray cluster has {len(nodes)} nodes"
    most = _configured_max_nodes()
    if most is not None and most > 1:
        return f"the Ray cluster may autoscale to {most} nodes" if most < math.inf else \
            "the Ray cluster's autoscaler may add nodes"
    if any(NODE_GROUP_LABEL in (n.get("Labels") or {}) for n in nodes) or _v1_autoscaled_types():
        return "the Ray cluster's autoscaler may add nodes"
    return None


NODE_GROUP_LABEL = "ray.io/node-group"  # ray._raylet.RAY_NODE_GROUP_KEY, set from RAY_NODE_TYPE_NAME


def _configured_max_nodes() -> float | None:
    """The most nodes the cluster's reported node groups allow (inf: a group without a bound), or None."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return sum(math.inf if g.max_count < 0 else g.max_count for g in config.node_group_configs)


def _v1_autoscaled_types() -> list[str]:
    """Node types the v1 autoscaler manages (none on a fixed cluster, or without a v1 autoscaler)."""
    import json

    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(status) if status else {}).get("autoscaler_report") or {}
    types = {*(report.get("node_type_mapping") or {}).values(), *(report.get("pending_launches") or {})}
    return sorted(t for t in types if not t.startswith("node_"))


def is_embedded() -> bool:
    """Whether this process started the Ray cluster it is connected to (which then never grows)."""
    import ray._private.worker as worker  # Ray has no public "did I start the head" query

    node = getattr(worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))


def wait_for_resources(cpus: float, gpus: float, what: str, timeout_s: float = DEFAULT_RESOURCE_TIMEOUT_S,
                       units: int | None = None) -> None:
    """Return once the connected Ray cluster has ``cpus`` CPUs and ``gpus`` GPUs in total; with ``units``
    the request is that many equal parts (e.g. Train workers), each of which must fit on one node.
    Raises ValueError naming ``what`` was asked and what the cluster has if that does not happen at once on
    an embedded cluster, or within ``timeout_s`` seconds on a real one."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("wait_for_resources needs a connected Ray cluster (call ray.init first)")
    if units is not None and units < 1:
        raise ValueError(f"units must be >= 1, got {units}")
    short = _shortfall(cpus, gpus, units)
    if short is None:
        return
    ask = f"{what} needs {cpus:g} CPUs and {gpus:g} GPUs"
    if is_embedded() or timeout_s <= 0:
        why = "this process's local Ray never grows" if is_embedded() else "--resource-timeout is 0"
        raise ValueError(f"{ask}; {short} ({why})")
    from ray.autoscaler.sdk import request_resources

    n = units or 1
    bundle = {k: v / n for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}
    request_resources(bundles=[bundle] * n)  # tells an autoscaler what to add; a no-op on a fixed cluster
    try:
        deadline = time.monotonic() + timeout_s
        while short is not None and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            short = _shortfall(cpus, gpus, units)
    finally:  # a lingering request would keep the nodes up after the run; the run's own demand holds them
        request_resources(bundles=[])
    if short is not None:
        raise ValueError(f"{ask}; {short} after waiting {timeout_s:g} s for the autoscaler (--resource-timeout)")

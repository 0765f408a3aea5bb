"""`start_local_ray`: a private local Ray instance without the head services that a run has no use for.

Besides the GCS and the raylet, `ray.init()` without a cluster starts three Python services on the head: the
autoscaler's monitor (a private instance has fixed resources), the log monitor (it streams worker output to the
drivers that ask for it; a run passes `log_to_driver=False`) and the dashboard's API server, which, with
`include_dashboard=False`, loads only the usage-stats module (usage statistics are off) and which `ray.init` waits
for until it has published its address. On a small machine they are a noticeable part of every run's start-up
(README, Performance).

Ray has no public switch for them: its head takes them from `RayParams.no_monitor`, `RayParams.include_log_monitor`
and `Node.start_api_server`. This module sets those for the one `ray.init` call it makes (tested on Ray 2.50 and
2.60; tests/test_local_ray.py fails when an upgrade moves them); a Ray without these hooks starts in full.
"""

from __future__ import annotations

from typing import Any

UNUSED_SERVICES = ("monitor", "log_monitor", "dashboard")  # Ray's names for the processes a run leaves out


def start_local_ray(**init_kwargs: Any) -> None:
    """`ray.init(**init_kwargs)` for a new local instance without the services in UNUSED_SERVICES, as far as the
    arguments allow: the log monitor only with `log_to_driver=False`, the API server only with
    `include_dashboard=False`."""
    import ray
    import ray._private.node as node_module

    full = node_module.Node
    if not hasattr(full, "start_api_server"):
        ray.init(**init_kwargs)
        return
    quiet = init_kwargs.get("log_to_driver") is False
    headless = init_kwargs.get("include_dashboard") is False

    class LeanHead(full):  # type: ignore[misc, valid-type]
        def __init__(self, ray_params: Any, head: bool = False, **kwargs: Any) -> None:
            if head:
                ray_params.no_monitor = True
                if quiet:
                    ray_params.include_log_monitor = False
            super().__init__(ray_params, head=head, **kwargs)

        def start_api_server(self, **kwargs: Any) -> None:
            if not headless:
                super().start_api_server(**kwargs)

    node_module.Node = LeanHead
    try:
        ray.init(**init_kwargs)
    finally:
        node_module.Node = full

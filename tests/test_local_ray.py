"""The private local Ray instance runs without the head services a run does not use (raypfl.runtime.local_ray)."""

import os
import subprocess
import sys

import pytest

from raypfl.runtime.local_ray import UNUSED_SERVICES


@pytest.mark.usefixtures("ray_session")
def test_the_session_instance_runs_without_the_unused_services() -> None:
    import ray
    import ray._private.node
    import ray._private.worker

    started = set(ray._private.worker._global_node.all_processes)
    assert {"gcs_server", "raylet"} <= started
    assert not started & set(UNUSED_SERVICES), "a Ray upgrade moved the hooks raypfl.runtime.local_ray uses"
    assert ray._private.node.Node.__name__ == "Node"  # Ray's own class is back for every later node

    @ray.remote
    class Echo:
        def echo(self, value: int) -> int:
            return value

    assert ray.get(Echo.remote().echo.remote(7), timeout=120) == 7
    assert ray.cluster_resources()["GPU"] == 4


def test_a_caller_that_asks_for_worker_output_keeps_the_log_monitor() -> None:
    script = ("import ray, ray._private.worker as w\n"
              "from raypfl.runtime.local_ray import start_local_ray\n"
              "start_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=True)\n"
              "print(sorted(w._global_node.all_processes))\n"
              "ray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}).stdout
    started = out.strip().splitlines()[-1]
    assert "'log_monitor'" in started and "'monitor'" not in started and "'dashboard'" not in started


def test_a_ray_without_the_hooks_starts_in_full(monkeypatch) -> None:
    # Another Ray version (inside the supported range) may not have the private hooks: a plain ray.init then.
    import ray
    import ray._private.node as node_module

    class OldNode:  # no start_api_server
        pass

    calls = []
    monkeypatch.setattr(node_module, "Node", OldNode)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    from raypfl.runtime.local_ray import start_local_ray

    start_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=False)
    assert calls == [{"num_cpus": 1, "include_dashboard": False, "log_to_driver": False}]
    assert node_module.Node is OldNode

"""The private local Ray instance runs without the head services a run does not use (raypfl.runtime.local_ray)."""

import pytest

from raypfl.runtime.local_ray import UNUSED_SERVICES

pytestmark = pytest.mark.usefixtures("ray_session")


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

    assert ray.get(Echo.remote().echo.remote(7)) == 7
    assert ray.cluster_resources()["GPU"] == 4

"""The cluster files: KubeRay manifests use only fields the KubeRay v1 CRDs define, a RayJob sets what a RayJob user
expects, and every file installs raypfl with the tested versions on a Ray inside the supported range."""

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"

# The fields of KubeRay's v1 RayJob / RayCluster specs these manifests may use (ray-project/kuberay,
# ray-operator/apis/ray/v1: rayjob_types.go, raycluster_types.go).
RAYJOB_SPEC = {"entrypoint", "runtimeEnvYAML", "rayClusterSpec", "clusterSelector", "shutdownAfterJobFinishes",
               "ttlSecondsAfterFinished", "activeDeadlineSeconds", "submitterConfig", "submitterPodTemplate",
               "submissionMode", "suspend", "jobId", "entrypointNumCpus", "entrypointNumGpus",
               "entrypointResources", "deletionStrategy", "managedBy", "backoffLimit", "metadata"}
SUBMITTER_CONFIG = {"backoffLimit"}
RAYCLUSTER_SPEC = {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling", "autoscalerOptions",
                   "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions"}
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template", "numOfHosts",
                "scaleStrategy", "suspend", "idleTimeoutSeconds"}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def check_cluster_spec(spec: dict[str, Any]) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP
    for group in spec.get("workerGroupSpecs", []):
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
    assert ray_in_range(spec["rayVersion"])
    for container in spec["headGroupSpec"]["template"]["spec"]["containers"]:
        assert container["image"].startswith("raypfl:")  # cluster/Dockerfile's image


def ray_in_range(version: str) -> bool:
    """Whether a Ray version satisfies pyproject.toml's requirement on ray."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("ray["))
    low = re.search(r">=\s*([\d.]+)", spec)
    high = re.search(r"<\s*([\d.]+)", spec)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    return (low is None or as_tuple(version) >= as_tuple(low.group(1))) and \
        (high is None or as_tuple(version) < as_tuple(high.group(1)))


def test_the_rayjob_sets_what_a_rayjob_user_expects() -> None:
    docs = {d["kind"]: d for d in documents("kuberay-rayjob.yaml")}
    spec = docs["RayJob"]["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0 and set(spec["submitterConfig"]) <= SUBMITTER_CONFIG
    assert spec["submitterConfig"]["backoffLimit"] >= 1
    assert spec["entrypoint"].startswith("raypfl ")
    check_cluster_spec(spec["rayClusterSpec"])
    claim = docs["PersistentVolumeClaim"]["metadata"]["name"]  # results outlive the cluster
    volumes = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in volumes)
    assert "RAYPFL_STORAGE" in yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]


def test_the_raycluster_uses_kuberay_fields_only() -> None:
    (cluster,) = documents("kuberay-raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    check_cluster_spec(cluster["spec"])


def test_every_install_uses_the_tested_versions_on_a_ray_in_range() -> None:
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:([\d.]+)-", dockerfile, re.M)
    assert base is not None and ray_in_range(base.group(1))
    assert "-c /home/ray/raypfl/constraints.txt" in dockerfile
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert any("-c /home/ubuntu/raypfl/constraints.txt" in c for c in launcher["setup_commands"])
    pinned = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^ray==([\d.]+)$", pinned, re.M).group(1) == base.group(1)  # type: ignore[union-attr]

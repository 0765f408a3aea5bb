"""A real multi-node Ray cluster on this machine (cluster/local_cluster.sh: a head and one worker node, each its
own node pool), an experiment submitted with `ray job submit --working-dir`, and client actors of different
classes placed on the nodes their pools name. The cluster is always stopped, also on failure."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from raypfl.runtime.checkpoint import CHECKPOINT
from tests.helpers import comparable, wait_until

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "cluster" / "local_cluster.sh"
DASHBOARD = "http://127.0.0.1:8266"


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    folder = tempfile.mkdtemp(prefix="rpc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "RAY_CLUSTER_DIR": folder,
           "RAY_PORT": "6391", "RAY_DASHBOARD_PORT": "8266", "AGENT_PORT": "52410"}
    try:
        subprocess.run([str(SCRIPT), "start", "1"], env=env, check=True, timeout=240, capture_output=True)
        yield env
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, timeout=120, capture_output=True)
        for path in (folder, f"{folder}-w1"):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def job(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("job")
    config = work / "job.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": {"name": "onjob", "output_dir": str(work / "runs")},
        "clients": {"num_clients": 4,
                    "heterogeneity": [
                        {"name": "fast", "density": 1.0, "count": 2, "download_mbps": 20, "upload_mbps": 5},
                        {"name": "slow", "density": 0.2, "count": 2, "download_mbps": 4, "upload_mbps": 1}],
                    "placement": {"fast": "pool_head", "slow": "pool_1"}},
        "budget": {"virtual_time_s": 40, "eval_every": 4},
        "runtime": {"num_workers": 2}}))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    started = time.monotonic()
    # The submission's own log grows inside the working directory it ships, as people write it
    # (`ray job submit ... > submit.log 2>&1`): .rayignore keeps it out of the package.
    log = ROOT / "submit-test.log"
    try:
        with log.open("w") as out:
            code = subprocess.run(
                ["ray", "job", "submit", "--address", DASHBOARD, "--submission-id", "raypfl-test", "--working-dir",
                 str(ROOT), "--runtime-env-json", json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": uri}}), "--",
                 sys.executable, "-m", "raypfl", "run", str(config)],
                env=cluster, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
        submit = subprocess.CompletedProcess([], code, log.read_text(), "")
    finally:
        log.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    status = subprocess.run(["ray", "job", "status", "--address", DASHBOARD, "raypfl-test"], env=cluster,
                            capture_output=True, text=True, timeout=120)
    results = list((work / "runs" / "onjob").glob("*/result.json"))
    print(f"ray job submit took {elapsed:.1f} s")
    return {"submit": submit, "status": status.stdout + status.stderr, "uri": uri, "elapsed": elapsed,
            "result": json.loads(results[0].read_text()) if results else None}


def test_job_submit_runs_an_experiment_on_the_cluster(job: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    assert job["submit"].returncode == 0, job["submit"].stdout[-3000:] + job["submit"].stderr[-3000:]
    assert "succeeded" in job["status"].lower()
    result = job["result"]
    assert result is not None and result["virtual_time_s"] == 40 and result["client_updates"] > 0
    run = MlflowClient(job["uri"]).get_run(result["mlflow_run_id"])  # the URI travelled through runtime_env
    assert run.info.status == "FINISHED" and "accuracy" in run.data.metrics


def test_client_actors_run_on_the_node_pools_their_classes_name(job: dict[str, Any]) -> None:
    workers = {tuple(w["classes"]): w for w in job["result"]["workers"]}
    assert set(workers) == {("fast",), ("slow",)}
    assert workers[("fast",)]["node_resources"] == ["pool_head"]
    assert workers[("slow",)]["node_resources"] == ["pool_1"]
    assert workers[("fast",)]["node"] != workers[("slow",)]["node"]


def stacks() -> str:
    """Where the run's processes are (py-spy, which comes with Ray): what a hung job's failure should show."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(proc.info["cmdline"] or [])
        if "raypfl run" in command or command.startswith(("ray::AggregatorActor", "ray::ClientActor")):
            try:
                dump = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(proc.pid)],
                                      capture_output=True, text=True, timeout=60)
                shown = f"{dump.stdout[-4000:]}{dump.stderr[-500:]}"
            except subprocess.TimeoutExpired:  # a stuck dump must not hide the failure it was to explain
                shown = "(py-spy timed out)"
            out.append(f"--- pid {proc.pid}: {command[:100]}\n{shown}")
    return "\n".join(out)


def readme_cluster_commands() -> list[str]:
    """The `ray job submit` commands of the README's "Running on a cluster", continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Running on a cluster"):text.index("## Troubleshooting")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", " ".join(command.split()))
            if command.startswith("ray job submit"):
                commands.append(command)
    return commands


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow")
    env = {**os.environ, "MLFLOW_PORT": "5077", "MLFLOW_DIR": str(folder),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(ROOT / "cluster" / "mlflow_server.sh"), "start"], env=env, check=True, timeout=180,
                   capture_output=True)
    try:
        yield "http://127.0.0.1:5077"
    finally:
        subprocess.run([str(ROOT / "cluster" / "mlflow_server.sh"), "stop"], env=env, timeout=60, capture_output=True)


def test_the_readme_cluster_commands_work_verbatim(cluster: dict[str, str], mlflow_server: str,
                                                   tmp_path: Path) -> None:
    # Run before the node-loss test, which kills the worker node. Only the addresses differ from the README (this
    # cluster and this MLflow server use ports of their own); results go to the job storage base, as they would
    # under ~/raypfl_results.
    from mlflow.tracking import MlflowClient

    commands = readme_cluster_commands()
    assert [c.split(" -- ", 1)[1].split()[:2] for c in commands] == [["raypfl", "run"], ["raypfl", "sweep"]]
    env = {**cluster, "RAYPFL_STORAGE": str(tmp_path / "storage")}
    client = MlflowClient(mlflow_server)
    for command in commands:
        command = command.replace("http://127.0.0.1:8265", DASHBOARD).replace("http://127.0.0.1:5000", mlflow_server)
        command = command.replace("--runtime-env-json '{\"env_vars\": {", "--runtime-env-json '{\"env_vars\": "
                                  f"{{\"RAYPFL_STORAGE\": \"{tmp_path / 'storage'}\", ")
        out = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        text = out.stdout + out.stderr
        assert out.returncode == 0 and "succeeded" in text.lower(), text[-4000:]
        printed = re.search(r"^results: (\S+)$", text, re.M)
        assert printed is not None, text[-3000:]
        place = Path(printed.group(1))
        assert place.is_relative_to(tmp_path / "storage"), place
        assert f"MLflow: {mlflow_server}" in text
        if " run " in command:
            result = json.loads((place / "result.json").read_text())
            assert client.get_run(result["mlflow_run_id"]).info.status == "FINISHED"
        else:
            assert (place / "summary.json").is_file() and len(list((place / "summaries").glob("*.json"))) == 3
            parents = [r for r in client.search_runs([client.get_experiment_by_name("raypfl").experiment_id])
                       if r.data.tags.get("raypfl.sweep") == "one_minute"]
            assert parents and parents[0].info.status == "FINISHED"


def test_a_job_survives_the_loss_of_a_worker_node_with_the_same_history(cluster: dict[str, str],
                                                                         tmp_path: Path) -> None:
    # Last in this module: it kills the worker node. Client actors are spread over both nodes; the one on the
    # killed node restarts on the head, its lost jobs are run again, and the history is the undisturbed one.
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": {"name": "node", "output_dir": str(tmp_path / "runs")},
        "clients": {"num_clients": 6}, "algorithm": {"name": "fedasync"},
        "budget": {"virtual_time_s": 240, "eval_every": 20}, "runtime": {"num_workers": 2},
        "tracking": {"enabled": False}}))

    def submit(name: str) -> None:
        subprocess.run(["ray", "job", "submit", "--address", DASHBOARD, "--submission-id", name, "--no-wait",
                        "--working-dir", str(ROOT), "--", sys.executable, "-m", "raypfl", "run", str(config),
                        "--output", str(tmp_path / name)], env=cluster, check=True, capture_output=True, timeout=300)

    def status(name: str) -> str:
        out = subprocess.run(["ray", "job", "status", "--address", DASHBOARD, name], env=cluster,
                             capture_output=True, text=True, timeout=120)
        return out.stdout + out.stderr

    def logs(name: str) -> str:
        out = subprocess.run(["ray", "job", "logs", "--address", DASHBOARD, name], env=cluster,
                             capture_output=True, text=True, timeout=120)
        lines = [line for line in (out.stdout + out.stderr).splitlines() if "[state-dump]" not in line]
        return "\n".join(lines)[-6000:]

    def wait(name: str, until: float) -> None:
        while time.monotonic() < until:
            text = status(name).lower()
            if "succeeded" in text:
                return
            assert "failed" not in text and "stopped" not in text, f"job {name} ended badly:\n{logs(name)}"
            time.sleep(2)
        raise AssertionError(f"job {name} did not end: {status(name)}\n{logs(name)}\n{stacks()}")

    submit("undisturbed")
    wait("undisturbed", time.monotonic() + 600)
    calm = json.loads((tmp_path / "undisturbed" / "result.json").read_text())
    assert len({w["node"] for w in calm["workers"]}) == 2  # spread: one actor on each node

    submit("disturbed")
    deadline = time.monotonic() + 600

    def ended() -> str | None:
        text = status("disturbed").lower()
        return f"job disturbed ended ({text.strip()[-300:]})" if "failed" in text or "stopped" in text else None

    # a few evaluations in
    wait_until((tmp_path / "disturbed" / CHECKPOINT).is_file, deadline - time.monotonic(),
               "the disturbed job's first checkpoint", interval=1, check=ended,
               detail=lambda: f"{logs('disturbed')}\n{stacks()}")
    subprocess.run([str(SCRIPT), "kill-node", "1"], env=cluster, check=True, capture_output=True, timeout=60)
    wait("disturbed", deadline)
    hurt = json.loads((tmp_path / "disturbed" / "result.json").read_text())
    assert comparable(hurt["history"]) == comparable(calm["history"])
    assert hurt["faults"] and len({w["node"] for w in hurt["workers"]}) == 1

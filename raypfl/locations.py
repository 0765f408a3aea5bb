"""Where a run's results and its MLflow store go.

Outside a Ray job, where the config says, relative to the working directory. Inside a Ray job (`ray job submit`:
Ray sets RAY_JOB_CONFIG_JSON_ENV_VAR for the job's entry process), whose working directory is a temporary copy
that vanishes with the job, a relative location resolves against a storage base that outlives it, as Ray Tune
writes to ~/ray_results: `experiment.storage`, else $RAYPFL_STORAGE, else ~/raypfl_results on the node that runs
the driver. Absolute locations are used as given everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from raypfl.config import Config

JOB_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"
STORAGE_VARIABLE = "RAYPFL_STORAGE"
DEFAULT_STORAGE = "~/raypfl_results"
DEFAULT_URI = "sqlite:///mlflow.db"
SQLITE = "sqlite:///"


def in_ray_job() -> bool:
    return JOB_VARIABLE in os.environ


def storage_base(cfg: Config) -> Path | None:
    """The base of relative locations inside a Ray job (None outside one: the working directory)."""
    if not in_ray_job():
        return None
    base = cfg.experiment.storage or os.environ.get(STORAGE_VARIABLE) or DEFAULT_STORAGE
    return Path(base).expanduser().resolve()


def resolve(cfg: Config, path: str | Path) -> Path:
    """A location the user gave (a run directory, an output folder), as it is to be used."""
    path = Path(path).expanduser()
    base = storage_base(cfg)
    return path if path.is_absolute() or base is None else base / path


def tracking_uri(cfg: Config) -> str:
    """`tracking.uri` overrides `MLFLOW_TRACKING_URI`, which overrides the default SQLite file `mlflow.db` (in the
    working directory, or inside a Ray job in the storage base). A relative SQLite path is made absolute: Ray
    processes (Tune trials above all) run in other folders."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith(SQLITE) and not uri[len(SQLITE):].startswith("/"):
        uri = SQLITE + str(resolve(cfg, uri[len(SQLITE):]).resolve())
    return uri

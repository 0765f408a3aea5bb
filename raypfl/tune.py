"""`raypfl sweep`: Ray Tune over experiment configs.

A trial is one experiment on the same engine: it reports every evaluation with `ray.tune.report` (with the
aggregator snapshot as its checkpoint every `runtime.checkpoint_every` evaluations), runs its aggregator and
client actors inside the trial's placement group, and logs to MLflow as a child run of the sweep's parent run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, model_validator
from rich.console import Console
from rich.table import Table

from raypfl.config import Config, Section, Text, apply_override, load_config, parse_override, read_yaml, to_yaml
from raypfl.errors import UserError
from raypfl.locations import resolve, tracking_uri
from raypfl.report import reported_accuracy
from raypfl.runtime.checkpoint import CHECKPOINT

REPORTED = ("accuracy", "loss", "best_accuracy", "final_accuracy", "reported_accuracy", "virtual_time_s",
            "mean_density", "min_density", "bytes_up", "bytes_down", "round")


class Domain(Section):
    """One searched key: exactly one of grid, choice, uniform, loguniform, randint."""

    grid: list[Any] | None = Field(None, min_length=1)
    choice: list[Any] | None = Field(None, min_length=1)
    uniform: list[float] | None = Field(None, min_length=2, max_length=2)
    loguniform: list[float] | None = Field(None, min_length=2, max_length=2)
    randint: list[int] | None = Field(None, min_length=2, max_length=2)

    @model_validator(mode="after")
    def _exactly_one(self) -> Domain:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform, randint (got {given or 'none'})")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"[lo, hi] needs lo < hi, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs lo > 0, got {self.loguniform[0]}")
        return self

    def example(self) -> Any:
        """A value from the domain, to check the key against the config before any trial starts."""
        values = self.grid or self.choice
        if values is not None:
            return values[0]
        return (self.uniform or self.loguniform or self.randint)[0]  # type: ignore[index]

    def to_tune(self) -> Any:
        from ray import tune

        if self.grid is not None:
            return tune.grid_search(self.grid)
        if self.choice is not None:
            return tune.choice(self.choice)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        assert self.randint is not None
        return tune.randint(self.randint[0], self.randint[1] + 1)  # inclusive of hi, as the sweep file reads


class Scheduler(Section):
    """ASHA early stopping over evaluations (Tune's `training_iteration`)."""

    kind: Literal["asha"] = "asha"
    grace_period: int = Field(3, ge=1)
    reduction_factor: Annotated[float, Field(gt=1.0)] = 2.0
    max_t: int | None = Field(None, ge=1)


def _scheduler_shorthand(value: Any) -> Any:
    return {"kind": value} if isinstance(value, str) and value != "none" else (None if value == "none" else value)


VariantName = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")]


class SweepConfig(Section):
    name: Text | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    base: dict[str, Any] | Text = Field(default_factory=dict)
    # named sets of dotted-key overrides, grid-searched as the key `variant` (the run's experiment.name)
    variants: dict[VariantName, dict[str, Any]] = Field(default_factory=dict)
    search_space: dict[str, Domain] = Field(default_factory=dict)
    # overrides that go with a value of a searched key, e.g. a budget per data split:
    # {data.partition.kind: {iid: {budget.virtual_time_s: 12000}}}
    linked: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    metric: Literal[REPORTED] = "final_accuracy"  # type: ignore[valid-type]
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(1, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    scheduler: Annotated[Scheduler | None, BeforeValidator(_scheduler_shorthand)] = None
    search_alg: Literal["basic", "optuna"] = "basic"
    max_failures: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _something_to_search(self) -> SweepConfig:
        if not self.search_space and not self.variants:
            raise ValueError("give a search_space, variants, or both")
        if "variant" in self.search_space:
            raise ValueError("'variant' is the key of the variants: name the variants under `variants`")
        for key, table in self.linked.items():
            domain = self.search_space.get(key)
            values = None if domain is None else (domain.grid or domain.choice)
            if values is None:
                raise ValueError(f"linked: '{key}' is not a grid or choice of the search_space")
            unknown = sorted(set(table) - {str(v) for v in values})
            if unknown:
                raise ValueError(f"linked: '{key}' never takes the value(s) {', '.join(unknown)}")
        return self


def _describe(exc: ValidationError, path: Path) -> str:
    err = max(exc.errors(), key=lambda e: len(e["loc"]))
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("literal[", "list[", "tuple[")))
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}' in sweep file {path}"
    return f"invalid sweep file {path} at '{key or 'top level'}': {err['msg'].removeprefix('Value error, ')}"


class Sweep:
    """A validated sweep: its file, the base config tree (overrides applied) and where its state lives."""

    def __init__(self, path: str | Path, overrides: list[str] | None = None) -> None:
        self.path = Path(path)
        try:
            self.spec = SweepConfig.model_validate(read_yaml(self.path))
        except ValidationError as exc:
            raise UserError(_describe(exc, self.path)) from None
        base = self.spec.base
        if isinstance(base, str):
            base_path = Path(base) if Path(base).is_absolute() else self.path.parent / base
            base = read_yaml(base_path)
        self.base: dict[str, Any] = dict(base)
        for text in overrides or []:
            apply_override(self.base, *parse_override(text))
        try:
            self.config = load_config(base=self.base)
        except UserError as exc:
            raise UserError(f"sweep base: {exc}") from None
        for key, domain in self.spec.search_space.items():
            try:
                load_config(base=self.base, overrides=[f"{key}={json.dumps(domain.example())}"])
            except UserError as exc:
                raise UserError(f"search_space '{key}': {exc}") from None
        for variant in self.spec.variants:
            try:
                load_config(base=self.base, overrides=self._variant_overrides(variant))
            except UserError as exc:
                raise UserError(f"variant '{variant}': {exc}") from None
        for key, table in self.spec.linked.items():
            for value, linked in table.items():
                try:
                    load_config(base=self.base, overrides=[f"{key}={value}", *_overrides(linked)])
                except UserError as exc:
                    raise UserError(f"linked to {key} = {value}: {exc}") from None
        self.search_space: dict[str, Domain] = {
            **({"variant": Domain(grid=list(self.spec.variants))} if self.spec.variants else {}),
            **self.spec.search_space}
        self.name = self.spec.name or self.path.stem
        self.dir = (resolve(self.config, self.config.experiment.output_dir) / "sweeps" / self.name).resolve()
        if self.config.tracking.enabled:  # trials run elsewhere: they get the resolved, absolute URI
            self.base.setdefault("tracking", {})["uri"] = tracking_uri(self.config)

    @property
    def expected_trials(self) -> int:
        """Grid values multiply, other domains are sampled once per sample."""
        return self.spec.num_samples * math.prod(len(d.grid) for d in self.search_space.values()
                                                 if d.grid is not None)

    @property
    def tune_dir(self) -> Path:
        return self.dir / "tune"

    def tune_space(self) -> dict[str, Any]:
        """Tune's param space. Tune walks a grid with the first key (in sorted order) fastest: numbered keys make
        the variants vary fastest, then the search space's keys in the order the file gives them, the last
        slowest, so that a long sweep finishes each seed's comparison of every variant before the next seed."""
        return {f"{i:02d} {key}": domain.to_tune() for i, (key, domain) in enumerate(self.search_space.items())}

    def _variant_overrides(self, variant: str) -> list[str]:
        return [*_overrides(self.spec.variants[variant]), f"experiment.name={json.dumps(variant)}"]

    def trial_config(self, params: dict[str, Any]) -> Config:
        """A trial's experiment: the base with its variant's overrides and its sampled values; one client actor
        unless the base says."""
        params = untune(params)
        variant = params.pop("variant", None)
        overrides = [*(self._variant_overrides(variant) if variant is not None else []),
                     *_overrides(dict(sorted(params.items())))]
        for key, table in self.spec.linked.items():
            overrides += _overrides(table.get(str(params.get(key)), {}))
        cfg = load_config(base=self.base, overrides=overrides)
        if cfg.runtime.num_workers is None:
            cfg = load_config(base=self.base, overrides=[*overrides, "runtime.num_workers=1"])
        return cfg

    def bundles(self, params: dict[str, Any]) -> list[dict[str, float]]:
        """The trial's placement group: one CPU for the trial (its aggregator runs there with 0 CPUs), then one
        bundle per client actor with the request of the classes it serves."""
        from raypfl.runtime.placement import bundle, worker_options

        cfg = self.trial_config(params)
        assert cfg.runtime.num_workers is not None
        options, _ = worker_options(cfg, cfg.runtime.num_workers)
        return [{"CPU": 1.0}, *(bundle(o) for o in options)]


def _overrides(values: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def untune(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params under the sweep's own keys (without `Sweep.tune_space`'s numbers)."""
    return {re.sub(r"^\d\d ", "", key): value for key, value in params.items()}


def _trial(params: dict[str, Any], sweep: Sweep, parent_run_id: str | None) -> None:
    """One Tune trial: run (or, after a restore, continue) an experiment and report each evaluation."""
    import ray
    from ray import tune

    from raypfl.runtime.driver import run_experiment

    run_dir = sweep.dir / "trials" / tune.get_context().get_trial_id()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None and (run_dir / "config.yaml").is_file():
        with checkpoint.as_directory() as folder:  # Tune's view of the trial's progress wins
            shutil.copytree(folder, (run_dir / CHECKPOINT).parent, dirs_exist_ok=True)

    def report(history: list[dict[str, Any]], saved: Path | None) -> None:
        record = history[-1]
        metrics = {k: record[k] for k in REPORTED if k in record}
        metrics["final_accuracy"] = record["accuracy"]
        metrics["best_accuracy"] = max(r["accuracy"] for r in history)
        metrics["reported_accuracy"] = reported_accuracy(history, budget.report_at_s, budget.report_span)["mean"]
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(saved) if saved is not None else None)

    budget = sweep.trial_config(params).budget
    quiet = Console(quiet=True)
    group = ray.util.get_current_placement_group()
    if (run_dir / "config.yaml").is_file():
        run_experiment(resume=run_dir, console=quiet, on_eval=report, placement_group=group)
    else:
        run_experiment(sweep.trial_config(params), output=run_dir, console=quiet, parent_run_id=parent_run_id,
                       on_eval=report, placement_group=group)
    # the trial's compact summary beside its siblings', as it finishes (what a reproduction commits)
    (sweep.dir / "summaries").mkdir(exist_ok=True)
    shutil.copyfile(run_dir / "summary.json", sweep.dir / "summaries" / f"{run_dir.name}.json")


def run_sweep(path: str | Path, overrides: list[str] | None = None, resume: bool = False,
              console: Console | None = None) -> dict[str, Any]:
    """Run (or continue) a sweep; returns a summary with the best trial and every trial's final metrics."""
    from ray import tune

    from raypfl.runtime.placement import connect_ray

    console = console or Console(stderr=True)
    sweep = Sweep(path, overrides)
    state = sweep.tune_dir / sweep.name
    if resume and not state.is_dir():
        raise UserError(f"--resume: no sweep named '{sweep.name}' to continue in {sweep.dir}")
    if not resume and state.exists():
        raise UserError(f"sweep '{sweep.name}' already exists in {sweep.dir}: continue it with --resume, or give "
                        "the sweep another name")
    sweep.dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = connect_ray(sweep.config)
    parent: _ParentRun | None = None
    status = "FAILED"
    try:
        parent = _ParentRun(sweep, resume) if sweep.config.tracking.enabled else None
        _check_fits(sweep, console)
        console.print(f"results: {sweep.dir}", soft_wrap=True)
        if sweep.config.tracking.enabled:
            console.print(f"MLflow: {tracking_uri(sweep.config)} (experiment {sweep.config.tracking.experiment})",
                          soft_wrap=True)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, sweep=sweep, parent_run_id=parent.run_id if parent else None),
            resources=lambda params: tune.PlacementGroupFactory(sweep.bundles(params)))
        if resume:
            tuner = tune.Tuner.restore(str(state), trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, param_space=sweep.tune_space(),
                               tune_config=_tune_config(sweep), run_config=_run_config(sweep))
        results, interrupted = _fit(tuner)
        if interrupted or len(results) < sweep.expected_trials:
            status = "KILLED"
            console.print(f"sweep interrupted; its state is saved: continue it with 'raypfl sweep {path} --resume'",
                          soft_wrap=True)
            raise KeyboardInterrupt
        trials = _trial_rows(sweep, results)
        summary = _summarise(sweep, trials)
        console.print(_table(sweep, trials))
        if summary["best"] is not None:
            console.print(f"best trial {summary['best']['trial']}: {sweep.spec.metric} = "
                          f"{summary['best'][sweep.spec.metric]:.4f} with {summary['best']['params']}")
        (sweep.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if parent is not None:
            parent.finish_sweep(summary)
        _compare_sweep(sweep, parent, console)
        status = "FINISHED"
        return summary
    finally:
        if parent is not None:
            parent.close(status)
        if started:
            import ray

            ray.shutdown()


def _fit(tuner: Any) -> tuple[Any, bool]:
    """Tuner.fit, and whether a Ctrl+C stopped it: Tune then returns normally (state saved for a restore) after
    handing the SIGINT handler it replaced back, so a sentinel installed first tells."""
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit(), False
    previous = signal.getsignal(signal.SIGINT)

    def sentinel(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, sentinel)
    try:
        results = tuner.fit()
        return results, signal.getsignal(signal.SIGINT) is sentinel
    finally:
        signal.signal(signal.SIGINT, previous)


def _tune_config(sweep: Sweep) -> Any:
    from ray import tune

    spec = sweep.spec
    scheduler = None
    if spec.scheduler is not None:
        from ray.tune.schedulers import ASHAScheduler

        s = spec.scheduler
        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=s.grace_period,
                                  reduction_factor=s.reduction_factor, max_t=s.max_t or 10**9)
    search_alg = None
    if spec.search_alg == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise UserError("search_alg 'optuna' needs the optuna package: pip install optuna") from None
        if any(d.grid is not None for d in sweep.search_space.values()):
            raise UserError("search_alg 'optuna' samples its own points: use choice instead of grid")
        search_alg = OptunaSearch()
    return tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                           max_concurrent_trials=spec.max_concurrent_trials, scheduler=scheduler,
                           search_alg=search_alg)


def _run_config(sweep: Sweep) -> Any:
    from ray import tune

    return tune.RunConfig(name=sweep.name, storage_path=str(sweep.tune_dir), verbose=1,
                          failure_config=tune.FailureConfig(max_failures=sweep.spec.max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1))


def _check_fits(sweep: Sweep, console: Console) -> None:
    """Refuse a sweep whose trial cannot fit the cluster at all; say how many fit at once (placed as Ray places
    the bundles of their placement groups, `raypfl.runtime.placement.trials_that_fit`)."""
    import ray

    from raypfl.runtime.placement import node_resources, reserved, trials_that_fit

    bundles = sweep.bundles({k: d.example() for k, d in sweep.search_space.items()})
    need = reserved(bundles)
    have = ray.cluster_resources()
    fits = trials_that_fit(bundles, node_resources())
    if fits == 0:
        raise UserError(f"one trial needs {need} but the cluster has "
                        f"{ {k: have.get(k, 0.0) for k in need} }: lower the per-class resources or add nodes")
    wanted = sweep.spec.max_concurrent_trials
    console.print(f"sweep '{sweep.name}': each trial reserves {need}; {fits} fit at once"
                  + (f", max_concurrent_trials = {wanted}" if wanted else ""))


def _trial_rows(sweep: Sweep, results: Any) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial = metrics.get("trial_id") or Path(result.path).name
        run_dir = sweep.dir / "trials" / str(trial)
        done = (run_dir / "result.json").is_file()
        final = json.loads((run_dir / "result.json").read_text()) if done else {}
        status = "done" if done else ("error" if result.error else "stopped early")  # ASHA: the last report stands
        rows.append({"trial": str(trial), "params": untune(result.config or {}),
                     "status": status, "run_dir": str(run_dir),
                     **{k: final.get(k, metrics.get(k)) for k in ("final_accuracy", "best_accuracy",
                                                                  "reported_accuracy", "virtual_time_s",
                                                                  "bytes_up", "bytes_down", sweep.spec.metric)},
                     "mlflow_run_id": final.get("mlflow_run_id")})
    return sorted(rows, key=lambda r: r["trial"])


def _summarise(sweep: Sweep, trials: list[dict[str, Any]]) -> dict[str, Any]:
    metric, sign = sweep.spec.metric, (1 if sweep.spec.mode == "max" else -1)
    scored = [t for t in trials if t.get(metric) is not None]
    best = max(scored, key=lambda t: sign * t[metric]) if scored else None
    return {"sweep": sweep.name, "metric": metric, "mode": sweep.spec.mode, "trials": trials, "best": best}


def _table(sweep: Sweep, trials: list[dict[str, Any]]) -> Table:
    keys = list(sweep.search_space)
    table = Table(title=f"sweep {sweep.name}")
    shown = ("reported_accuracy", "final_accuracy", "best_accuracy")
    for column in ("trial", *keys, "status", "reported acc (%)", "final acc (%)", "best acc (%)"):
        table.add_column(column, justify="right")
    for t in trials:
        table.add_row(t["trial"], *(str(t["params"].get(k)) for k in keys), t["status"],
                      *(f"{100 * t[k]:.2f}" if t[k] is not None else "-" for k in shown))
    return table


def _compare_sweep(sweep: Sweep, parent: _ParentRun | None, console: Console) -> None:
    from raypfl.compare import compare_runs, load_run_dirs

    runs = load_run_dirs(sorted((sweep.dir / "trials").glob("*/result.json")), swept=list(sweep.search_space))
    if runs:
        paths = compare_runs(runs, sweep.dir / "compare", console)
        if parent is not None:
            parent.log_artifacts(paths)


class _ParentRun:
    """The sweep's MLflow run: search space and settings as params, best trial and best config at the end."""

    def __init__(self, sweep: Sweep, resume: bool) -> None:
        from mlflow.tracking import MlflowClient

        from raypfl.tracking import RunTracker, quiet_mlflow

        quiet_mlflow()
        self.client = MlflowClient(tracking_uri=tracking_uri(sweep.config))
        marker = sweep.dir / "mlflow_parent_run_id"
        if resume and marker.is_file():
            self.run_id = marker.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment_id = RunTracker.experiment_id(self.client, sweep.config)
        tags = {"mlflow.runName": f"sweep-{sweep.name}", "raypfl.sweep": sweep.name,
                "algorithm": sweep.config.algorithm.name, "dataset": sweep.config.data.dataset}
        self.run_id = self.client.create_run(experiment_id, run_name=f"sweep-{sweep.name}", tags=tags).info.run_id
        marker.write_text(self.run_id)
        spec = sweep.spec
        for key, value in {"metric": spec.metric, "mode": spec.mode, "num_samples": spec.num_samples,
                           "search_space": json.dumps({k: d.model_dump(exclude_none=True)
                                                       for k, d in sweep.search_space.items()})[:6000]}.items():
            self.client.log_param(self.run_id, key, value)
        resolved = sweep.dir / "sweep.yaml"
        resolved.write_text(yaml.safe_dump({**spec.model_dump(mode="json", exclude_none=True), "name": sweep.name,
                                            "base": sweep.base}, sort_keys=False))
        self.client.log_artifact(self.run_id, str(resolved))

    def finish_sweep(self, summary: dict[str, Any]) -> None:
        for trial in summary["trials"]:  # Tune kills a trial it stops early before its run can close itself
            marker = Path(trial["run_dir"]) / "mlflow_run_id"
            if trial["status"] != "done" and marker.is_file():
                self.client.set_terminated(marker.read_text().strip(), status="KILLED")
        best = summary["best"]
        if best is None:
            return
        self.client.set_tag(self.run_id, "best_trial", best["trial"])
        self.client.log_metric(self.run_id, f"best_{summary['metric']}", float(best[summary["metric"]]))
        for key, value in best["params"].items():
            self.client.log_param(self.run_id, f"best.{key}", str(value)[:6000])
        best_config = Path(best["run_dir"]) / "config.yaml"
        if best_config.is_file():
            target = best_config.parent.parent.parent / "best_config.yaml"
            target.write_text(to_yaml(load_config(best_config)))
            self.client.log_artifact(self.run_id, str(target))

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="compare")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)

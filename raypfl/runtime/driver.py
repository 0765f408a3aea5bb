"""`run_experiment`: one run's life cycle, from checking its inputs to the summary it prints.

Inputs are checked before anything is started (config, data, run directory, where a Ray job may write); then Ray
starts and the client actors are sized and placed (`raypfl.runtime.placement`) while PyTorch and the model load in
a thread (`raypfl.runtime.pool`), and MLflow opens its run in another. The driver keeps the newest aggregator
snapshot (taken at every evaluation) and owns the model versions it needs: when the aggregator dies, a new one
continues from it and the history does not change (design principle 8). Ctrl+C, SIGTERM and a run that cannot go
on write that snapshot as a checkpoint first. `raypfl.results` writes what a finished run leaves behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from raypfl.config import Config, load_config, to_yaml
from raypfl.data import partition
from raypfl.data.datasets import Reader, locate_dataset
from raypfl.errors import RunFailed, Terminated, UserError
from raypfl.locations import resolve, tracking_uri
from raypfl.report import summary_table
from raypfl.results import build_result, write_outputs
from raypfl.runtime.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from raypfl.runtime.placement import check_schedulable, connect_ray, default_num_workers, worker_options
from raypfl.tracking import TrackerProcess

if TYPE_CHECKING:  # PyTorch-bound: imported when a run starts, while Ray starts
    from raypfl.runtime.pool import Experiment, Pilot

EvalHook = Callable[[list[dict[str, Any]], Path | None], None]


def check_inputs(cfg: Config) -> Reader:
    """What can be checked of a run's inputs before anything starts: the settings that only make sense together
    and the dataset's files (`raypfl.data.datasets.locate_dataset`). Returns the dataset's reader."""
    for ref in cfg.algorithm.reference_clients:
        if ref >= cfg.clients.num_clients:
            raise UserError(f"invalid value {ref} in 'algorithm.reference_clients': "
                            f"clients are numbered 0..{cfg.clients.num_clients - 1}")
    concurrency = cfg.clients.concurrency
    if cfg.algorithm.trigger == "reference_window" and concurrency is not None and \
            len(set(cfg.algorithm.reference_clients)) > concurrency:
        raise UserError(f"clients.concurrency ({concurrency}) must leave room for the "
                        f"{len(set(cfg.algorithm.reference_clients))} reference clients, which always train")
    if cfg.clients.availability.kind == "trace":
        from raypfl.sim.availability import read_trace

        assert cfg.clients.availability.path is not None
        read_trace(cfg.clients.availability.path)  # a missing or malformed trace is a UserError now, not in Ray
    return locate_dataset(cfg.data, seed=cfg.experiment.seed)


def read_inputs(cfg: Config, reader: Reader) -> Experiment:
    """Load the dataset and partition it over the clients (a partition the data cannot make is a UserError)."""
    from raypfl.runtime.pool import build_experiment

    dataset = reader()
    parts = partition(dataset.y_train, cfg.clients.num_clients, cfg.data.partition, cfg.experiment.seed,
                      writers=dataset.writers)
    return build_experiment(cfg, dataset, parts)


def prepare(cfg: Config) -> Experiment:
    """Everything a run derives from its config and data before Ray is involved."""
    return read_inputs(cfg, check_inputs(cfg))


def _run_name(cfg: Config) -> str:
    return f"{cfg.algorithm.name}-{cfg.data.dataset}-s{cfg.experiment.seed}-{datetime.now():%Y%m%d-%H%M%S}"


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say in one line why it cannot be (before anything else is started)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} is not empty (use --resume to continue a run there)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write the run directory {run_dir}: {exc.strerror or type(exc).__name__} "
                        "(set experiment.output_dir or --output to a writable folder)") from None


_interrupted: list[type[BaseException]] = []  # what the latest SIGINT / SIGTERM of this run raised


def _stop_on_sigterm() -> Callable[[], None]:
    """From now on SIGTERM raises Terminated in the main thread, and Ctrl+C KeyboardInterrupt (called after
    ray.init, which installs a handler of its own); returns what puts the previous handlers back. Which one came
    is remembered: raised inside a C call (Ray's), the exception can surface as a SystemError instead."""
    _interrupted.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, _frame: Any) -> None:
        kind = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        _interrupted.append(kind)
        raise kind

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


class _Background:
    """A call run in a daemon thread; `get` waits for its value (or raises its error)."""

    def __init__(self, name: str, call: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller of get()
                self._error = exc

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def get(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def run_experiment(cfg: Config | None = None, output: str | Path | None = None, resume: str | Path | None = None,
                   console: Console | None = None, parent_run_id: str | None = None, on_eval: EvalHook | None = None,
                   placement_group: Any = None) -> dict[str, Any]:
    """Run one experiment to its budget; returns the contents of result.json.

    `on_eval(history, checkpoint_dir)` is called after every evaluation (the newest is history[-1]), with the
    checkpoint folder when one was just written (Tune reports through it). Inside `placement_group` the
    aggregator takes bundle 0 and client actor i bundle i + 1."""
    console = console or Console(stderr=True)
    snapshot, run_id = None, None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml")
        if (run_dir / "result.json").is_file():
            result = json.loads((run_dir / "result.json").read_text())
            console.print(f"run {run_dir} has already finished (final accuracy "
                          f"{100 * result['final_accuracy']:.2f} %): nothing to resume", soft_wrap=True)
            return result
        if (run_dir / CHECKPOINT).is_file():
            snapshot = load_checkpoint(run_dir / CHECKPOINT)
        marker = run_dir / "mlflow_run_id"
        run_id = marker.read_text().strip() if marker.is_file() else None
    assert cfg is not None
    timing = {"process_started_at": _process_start()}
    reader = check_inputs(cfg)
    if resume is None:
        run_name = _run_name(cfg)
        run_dir = resolve(cfg, output) if output is not None else \
            resolve(cfg, cfg.experiment.output_dir) / cfg.experiment.name / run_name
        prepare_run_dir(run_dir)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        write_generated_availability(cfg, run_dir)
    else:
        run_name = run_dir.name
    console.print(f"results: {run_dir.resolve()}", soft_wrap=True)
    if cfg.tracking.enabled:
        console.print(f"MLflow: {tracking_uri(cfg)} (experiment {cfg.tracking.experiment})", soft_wrap=True)
    inputs = _Background("inputs", lambda: read_inputs(cfg, reader))  # the data loads while Ray starts
    # MLflow imports in a child process while Ray starts; the run opens in MLflow once the actors are created
    tracker = TrackerProcess(cfg, run_name, run_id, parent_run_id) if cfg.tracking.enabled else None
    try:
        return _run(cfg, inputs, run_dir, snapshot, tracker, console, on_eval, placement_group, timing)
    except UserError:
        if resume is None:  # bad input found while starting: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def write_generated_availability(cfg: Config, run_dir: Path) -> None:
    """A generated (diurnal) availability is written beside the run as a trace, to inspect or replay
    (`clients.availability: <run dir>/availability.csv`), for populations of up to 10,000 clients."""
    from raypfl.fl.state import PER_CLIENT_UP_TO
    from raypfl.sim.availability import Diurnal, generated_rows, write_trace
    from raypfl.sim.heterogeneity import client_profiles

    if cfg.clients.availability.kind != "diurnal" or cfg.clients.num_clients > PER_CLIENT_UP_TO:
        return
    classes = client_profiles(cfg.clients)
    model = Diurnal(cfg.clients.availability, [k.name for k in classes.kinds], classes.index, cfg.experiment.seed)
    write_trace(run_dir / "availability.csv", generated_rows(model, cfg.clients.num_clients, cfg.budget.virtual_time_s),
                comment=f"the diurnal availability of this run (seed {cfg.experiment.seed})")


def _process_start() -> float:
    """When this process started (wall clock, from Linux's /proc; elsewhere: now): start-up is measured from there.

    Measured back from now on the clock /proc counts in: /proc/stat's boot time is rounded to whole seconds."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def _run(cfg: Config, inputs: _Background, run_dir: Path, snapshot: dict[str, Any] | None,
         tracker: TrackerProcess | None, console: Console, on_eval: EvalHook | None,
         placement_group: Any, timing: dict[str, float]) -> dict[str, Any]:
    import ray

    from raypfl.runtime.client import worker_info
    from raypfl.runtime.pool import Pilot, create_actors, describe_workers, load_actors

    started_ray = False
    actors: list[Any] = []
    pilot: Pilot | None = None
    status = "FAILED"
    restore_sigterm: Callable[[], None] = lambda: None  # noqa: E731
    try:
        started_ray = connect_ray(cfg)
        restore_sigterm = _stop_on_sigterm()
        timing["ray_ready_at"] = time.time()
        options, eligible = worker_options(cfg, cfg.runtime.num_workers or default_num_workers(cfg))
        if placement_group is None:
            check_schedulable(cfg, options)
        actors = create_actors(cfg, options, placement_group)  # they start while the data finishes loading
        timing["actors_created_at"] = time.time()
        exp: Experiment = inputs.get()
        timing["inputs_loaded_at"] = time.time()
        pilot = Pilot(exp, actors, eligible, load_actors(exp, actors), placement_group, snapshot, run_dir)
        if tracker is not None:
            tracker.open()
        history = _drive(cfg, pilot, tracker, run_dir, console, on_eval)
        timing["simulated_at"] = time.time()
        summary = pilot.summary()
        infos = worker_info(actors)
        result = build_result(cfg, history, summary, run_dir, tracker.run_id if tracker is not None else None)
        result["faults"] = pilot.faults()
        result["workers"] = describe_workers(exp, infos, eligible)
        steps = [i["first_step_at"] for i in infos if i.get("first_step_at")]
        result["timing"] = {**timing, "first_step_at": min(steps) if steps else None,
                            "round_s_median": summary["round_s_median"]}
        write_outputs(run_dir, result, exp.class_index, [k.name for k, _ in exp.class_counts], tracker)
        console.print(summary_table(result))
        if result["restoration"] is not None:
            console.print(result["restoration"], soft_wrap=True)
        console.print(f"run directory: {run_dir}", soft_wrap=True)  # a path stays whole, to copy
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        _save_latest(pilot, run_dir, console, "interrupted")
        raise
    except RunFailed:
        _save_latest(pilot, run_dir, console, "stopped")
        raise
    except Exception:
        if not _interrupted:
            raise
        status = "KILLED"  # the signal landed inside a C call, which reported it as another error
        _save_latest(pilot, run_dir, console, "interrupted")
        raise _interrupted[-1]() from None
    finally:
        for actor in actors:
            ray.kill(actor)
        if pilot is not None:
            pilot.stop()
        if tracker is not None:
            with suppress(Exception):  # the run's own error, if any, is the one to report
                tracker.finish(status)
        if started_ray:
            ray.shutdown()
        restore_sigterm()


def _save_latest(pilot: Pilot | None, run_dir: Path, console: Console, how: str) -> None:
    if pilot is None or pilot.latest is None:
        return
    save_checkpoint(run_dir / CHECKPOINT, pilot.materialise())
    console.print(f"run {how} at round {pilot.latest['scalars']['round']}: continue it with "
                  f"'raypfl run --resume {run_dir}'", soft_wrap=True)


def _drive(cfg: Config, pilot: Pilot, tracker: TrackerProcess | None, run_dir: Path, console: Console,
           on_eval: EvalHook | None) -> list[dict[str, Any]]:
    """Pull evaluations from the aggregator until the budget is spent: progress, MLflow, checkpoints. The
    aggregator is already on its way to the next evaluation while one is logged and saved."""
    from raypfl.runtime.dispatch import WorkersLost

    budget = cfg.budget.virtual_time_s
    history: list[dict[str, Any]] = list(pilot.latest["history"]) if pilot.latest is not None else []
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed:,.0f}/{task.total:,.0f} virtual s"),
               TextColumn("round {task.fields[round]} · acc {task.fields[acc]} · in flight {task.fields[flight]}"),
               TimeElapsedColumn()]
    evals = 0
    over = pilot.latest is not None and pilot.latest["scalars"]["done"]  # stopped after its last checkpoint
    if not over:
        pilot.submit()
    if tracker is not None:  # the MLflow run opens while the aggregator runs
        (run_dir / "mlflow_run_id").write_text(tracker.opened())
    if over:
        return history
    with Progress(*columns, console=console, transient=False) as progress:
        start = history[-1]["virtual_time_s"] if history else 0.0
        task = progress.add_task(cfg.algorithm.name, total=budget, completed=start, round="-", acc="-",
                                 flight="-")
        while True:
            try:
                step = pilot.collect()
            except WorkersLost as exc:  # raised in the aggregator: Ray's error is a WorkersLost too
                raise RunFailed(str(exc).strip().splitlines()[-1].removeprefix("WorkersLost: ")) from None
            if not step["done"]:
                pilot.submit()
            record = step["record"]
            new = not history or history[-1]["round"] != record["round"] or \
                history[-1]["virtual_time_s"] != record["virtual_time_s"]
            if new:
                history.append(record)
                if tracker is not None:
                    tracker.log_eval(record)
            progress.update(task, completed=min(record["virtual_time_s"], budget), round=record["round"],
                            acc=f"{100 * record['accuracy']:.1f}%", flight=step["in_flight"])
            evals += 1
            every = cfg.runtime.checkpoint_every
            saved = None
            if every and (evals % every == 0 or step["done"]):
                saved = (run_dir / CHECKPOINT).parent
                save_checkpoint(run_dir / CHECKPOINT, pilot.materialise())
            if on_eval is not None and (new or saved is not None):
                on_eval(history, saved)
            if step["done"]:
                return history

"""`raypfl` command line: run | sweep | compare | config | data.

Exit codes: 0 success, 2 invalid input (one `error: ...` line on stderr, no traceback), 1 failure during a run.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from raypfl.errors import RunFailed, Terminated, UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one `error:` line (exit 2) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set clients.num_clients=20 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="raypfl", description="Heterogeneous asynchronous federated learning with pruning "
                     "and recovery (PR-FL / FedGMR) on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run one experiment (the built-in demo without CONFIG)")
    run.add_argument("config", nargs="?", help="experiment YAML file")
    _add_overrides(run)
    run.add_argument("--output", metavar="DIR", help="run directory (default runs/<experiment>/<run name>)")
    run.add_argument("--resume", metavar="DIR", help="resume the run saved in DIR from its last checkpoint")
    run.set_defaults(handler=_cmd_run)

    sweep = sub.add_parser("sweep", help="sweep hyperparameters with Ray Tune (one experiment per trial)")
    sweep.add_argument("sweep", help="sweep YAML file (see tune_configs/)")
    _add_overrides(sweep)
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    sweep.set_defaults(handler=_cmd_sweep)

    compare = sub.add_parser("compare", help="table and plots across runs (run directories or MLflow)")
    compare.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                         help="run directories (or their result.json, or compact summary .json files) to compare")
    compare.add_argument("--experiment", metavar="NAME", help="compare the runs of this MLflow experiment")
    compare.add_argument("--sweep", metavar="NAME_OR_RUN_ID", help="only the trials of this sweep (with --experiment)")
    compare.add_argument("--tracking-uri", metavar="URI",
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    compare.add_argument("--split-by", action="append", default=[], metavar="KEY",
                         help="also tell run directories apart by this config key, e.g. data.partition.kind")
    compare.add_argument("--by-name", action="store_true",
                         help="group run directories by experiment.name (a sweep's variant) instead of method")
    compare.add_argument("--baseline", metavar="METHOD",
                         help="also give each method's speed-up to each target over this one (e.g. fedasync)")
    compare.add_argument("--output", metavar="DIR", default="compare", help="where the table and plots go")
    compare.set_defaults(handler=_cmd_compare)

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("config", nargs="?", help="experiment YAML file (default: the built-in defaults)")
    _add_overrides(show)
    show.set_defaults(handler=_cmd_config_show)
    ref = config_sub.add_parser("reference", help="print every config key with its default and meaning (Markdown)")
    ref.set_defaults(handler=_cmd_config_reference)

    trace = sub.add_parser("trace", help="client availability traces (clients.availability)")
    trace_sub = trace.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = trace_sub.add_parser("generate", help="write the availability of a config's clients as a trace file")
    gen.add_argument("config", nargs="?", help="experiment YAML file (clients.availability: diurnal)")
    _add_overrides(gen)
    gen.add_argument("--out", required=True, metavar="CSV", help="trace file to write")
    gen.add_argument("--until", type=float, metavar="S", help="virtual seconds covered (default: the budget)")
    gen.set_defaults(handler=_cmd_trace_generate)
    conv = trace_sub.add_parser("convert-fedscale", help="FedScale's client_behave_trace to a trace file")
    conv.add_argument("source", help="FedScale's client_behave_trace (pickled; only plain data is read)")
    conv.add_argument("--out", required=True, metavar="CSV", help="trace file to write")
    conv.set_defaults(handler=_cmd_trace_convert)

    data = sub.add_parser("data", help="inspect datasets and partitions")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    dshow = data_sub.add_parser("show", help="per-client sizes and label histograms of a partition")
    dshow.add_argument("config", nargs="?", help="experiment YAML file")
    _add_overrides(dshow)
    dshow.add_argument("--heatmap", metavar="PNG", help="also write a clients × classes heatmap here")
    dshow.set_defaults(handler=_cmd_data_show)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from raypfl.config import load_config
    from raypfl.runtime.driver import run_experiment

    console = Console(stderr=True)
    if args.resume:
        if args.config or args.overrides or args.output:
            raise UserError("--resume continues a saved run as it was configured: drop CONFIG, --set and --output")
        run_experiment(resume=args.resume, console=console)
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.config is None and not args.overrides:
        console.print(f"no CONFIG given: running the built-in demo ({cfg.data.dataset}, "
                      f"{cfg.clients.num_clients} clients, {cfg.algorithm.name}, {cfg.clients.heterogeneity} "
                      "heterogeneity)")
    run_experiment(cfg, output=args.output, console=console)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from raypfl.tune import run_sweep

    run_sweep(args.sweep, args.overrides, resume=args.resume)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from raypfl.compare import compare_runs, load_mlflow_runs, load_run_dirs
    from raypfl.locations import DEFAULT_URI

    console = Console()
    if not console.is_terminal:  # piped or captured: room for the whole table rather than 80 columns
        console = Console(width=160)
    if bool(args.run_dirs) == bool(args.experiment):
        raise UserError("give either run directories or --experiment NAME")
    if args.sweep and not args.experiment:
        raise UserError("--sweep needs --experiment")
    if args.run_dirs:
        swept = ["variant", *args.split_by] if args.by_name else args.split_by
        compare_runs(load_run_dirs(args.run_dirs, swept), Path(args.output), console, args.baseline)
        return 0
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    runs, parent = load_mlflow_runs(uri, args.experiment, args.sweep)
    written = compare_runs(runs, Path(args.output), console, args.baseline)
    if parent is not None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        for path in written:
            client.log_artifact(parent, str(path), artifact_path="compare")
        console.print(f"plots logged to the sweep's MLflow run {parent}")
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from raypfl.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_config_reference(args: argparse.Namespace) -> int:
    from raypfl.config_reference import reference

    print(reference(), end="")
    return 0


def _cmd_trace_generate(args: argparse.Namespace) -> int:
    from raypfl.config import load_config
    from raypfl.sim.availability import Diurnal, generated_rows, write_trace
    from raypfl.sim.heterogeneity import client_profiles

    cfg = load_config(args.config, args.overrides)
    if cfg.clients.availability.kind != "diurnal":
        raise UserError("raypfl trace generate writes a generated trace: set clients.availability.kind=diurnal")
    classes = client_profiles(cfg.clients)
    model = Diurnal(cfg.clients.availability, [k.name for k in classes.kinds], classes.index, cfg.experiment.seed)
    until = args.until or cfg.budget.virtual_time_s
    path = Path(args.out)
    if not path.parent.is_dir():
        raise UserError(f"--out: folder {path.parent} does not exist")
    rows = write_trace(path, generated_rows(model, cfg.clients.num_clients, until),
                       comment=f"raypfl diurnal availability, seed {cfg.experiment.seed}, 0-{until:g} virtual s")
    print(f"{rows:,} online intervals of {cfg.clients.num_clients:,} clients written to {path}")
    return 0


def _cmd_trace_convert(args: argparse.Namespace) -> int:
    from raypfl.sim.availability import fedscale_intervals, write_trace

    source, path = Path(args.source), Path(args.out)
    if not source.is_file():
        raise UserError(f"FedScale trace not found: {source}")
    rows = write_trace(path, fedscale_intervals(source), comment=f"converted from FedScale's {source.name}")
    print(f"{rows:,} online intervals written to {path}")
    return 0


def _cmd_data_show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from raypfl.config import load_config
    from raypfl.data import load_dataset, partition, partition_table, save_partition_heatmap

    cfg = load_config(args.config, args.overrides)
    dataset = load_dataset(cfg.data, seed=cfg.experiment.seed)
    parts = partition(dataset.y_train, cfg.clients.num_clients, cfg.data.partition, cfg.experiment.seed,
                      writers=dataset.writers)
    console = Console()
    console.print(partition_table(dataset, parts))
    if args.heatmap:
        path = Path(args.heatmap)
        if not path.parent.is_dir():
            raise UserError(f"--heatmap: folder {path.parent} does not exist")
        save_partition_heatmap(path, dataset, parts)
        console.print(f"heatmap written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except RunFailed as exc:
        print(f"error: run failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a failure during the run: exit 1, traceback only on request
        if os.environ.get("RAYPFL_DEBUG"):
            traceback.print_exc()
        print(f"error: run failed: {type(exc).__name__}: {exc} (set RAYPFL_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1

"""`raypfl compare` on compact run summaries: groups, the papers' metrics and speed-ups, by hand (no Ray)."""

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from raypfl.cli import main
from raypfl.compare import compare_runs, load_run_dirs, summary_rows
from raypfl.config import load_config
from raypfl.errors import UserError
from raypfl.results import compact_summary


def summary(tmp: Path, name: str, algorithm: str, seed: int, kind: str, accuracy: list[float]) -> Path:
    """A run evaluated every 100 s with these accuracies (mean density 1, no traffic)."""
    cfg = load_config(overrides=[f"algorithm.name={algorithm}", f"experiment.seed={seed}",
                                 f"data.partition.kind={kind}", "budget.target_accuracies=[0.5]",
                                 "budget.smoothing=2", "budget.report_span=1", "budget.report_at_s=200"])
    history = [{"round": k, "virtual_time_s": 100.0 * k, "accuracy": a, "cache_accuracy": None, "loss": 0.0,
                "mean_density": 1.0, "min_density": 1.0, "bytes_up": 0, "bytes_down": 0, "updates": k}
               for k, a in enumerate(accuracy)]
    result: dict[str, Any] = {"algorithm": algorithm, "dataset": "digits", "heterogeneity": "high", "seed": seed,
                              "history": history}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(compact_summary(result, cfg.model_dump(mode="json"))))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    # smoothed over 2 evaluations, 0.5 is reached at: fedasync 400 s (0.4, 0.6) and 300 s; prfl 200 s and 100 s
    return [summary(tmp_path, "a0", "fedasync", 0, "iid", [0.1, 0.2, 0.3, 0.4, 0.6, 0.7]),
            summary(tmp_path, "a1", "fedasync", 1, "iid", [0.1, 0.2, 0.4, 0.6, 0.7, 0.7]),
            summary(tmp_path, "p0", "prfl", 0, "iid", [0.1, 0.4, 0.7, 0.8, 0.8, 0.8]),
            summary(tmp_path, "p1", "prfl", 1, "iid", [0.4, 0.6, 0.7, 0.8, 0.8, 0.8]),
            summary(tmp_path, "d0", "prfl", 0, "dirichlet", [0.1, 0.1, 0.1, 0.1, 0.1, 0.1])]


def test_summaries_regenerate_the_table_with_speed_ups_per_split(runs: list[Path]) -> None:
    rows = {r["method"]: r for r in summary_rows(load_run_dirs(runs, ["data.partition.kind"]), baseline="fedasync")}
    assert set(rows) == {"fedasync kind=iid", "prfl kind=iid", "prfl kind=dirichlet"}
    assert rows["fedasync kind=iid"]["time to 50 % (s)"] == "350 ± 71"
    assert rows["prfl kind=iid"]["time to 50 % (s)"] == "150 ± 71"
    assert rows["prfl kind=iid"]["speed-up to 50 %"] == "2.33x"  # 350 / 150
    assert rows["fedasync kind=iid"]["speed-up to 50 %"] == "1.00x"
    assert rows["prfl kind=dirichlet"]["speed-up to 50 %"] == "-"  # no FedAsync run on that split, and not reached
    # reported: evaluations 1..3 around T* = 200 s; fedasync seeds (0.2+0.3+0.4)/3 = 0.3 and (0.2+0.4+0.6)/3 = 0.4
    assert rows["fedasync kind=iid"]["reported accuracy (%)"] == "35.00 ± 7.07"


def test_compare_writes_the_same_markdown_from_the_files_alone(runs: list[Path], tmp_path: Path) -> None:
    quiet = Console(quiet=True)
    compare_runs(load_run_dirs(runs, ["data.partition.kind"]), tmp_path / "a", quiet, baseline="fedasync")
    assert main(["compare", *map(str, runs), "--split-by", "data.partition.kind", "--baseline", "fedasync",
                 "--output", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "compare.md").read_text() == (tmp_path / "b" / "compare.md").read_text()
    with pytest.raises(UserError, match="names none of the compared methods"):
        compare_runs(load_run_dirs(runs), tmp_path / "c", quiet, baseline="fedavg")


def test_a_file_that_is_not_a_summary_is_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a run summary"):
        load_run_dirs([bad])

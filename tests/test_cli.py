import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raypfl.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse exits for --help and usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in err


def test_config_show_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "config", "show", "--set", "clients.num_clients=12")
    assert code == 0
    resolved = yaml.safe_load(out)
    assert resolved["clients"]["num_clients"] == 12
    assert set(resolved) == {"experiment", "data", "model", "clients", "network", "algorithm", "training",
                             "budget", "runtime", "tracking"}


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["bogus"], "invalid choice: 'bogus'"),
        ([], "required"),
        (["config"], "required"),
        (["config", "show", "--nope"], "unrecognized arguments: --nope"),
        (["config", "show", "--set"], "expected one argument"),
        (["config", "show", "--set", "novalue"], "--set expects KEY=VALUE"),
        (["config", "show", "--set", "=1"], "--set expects KEY=VALUE"),
        (["config", "show", "--set", "a..b=1"], "--set expects KEY=VALUE"),
        (["config", "show", "missing.yaml"], "config file not found: missing.yaml"),
        (["config", "show", "--set", "data.partition.alpha=0"], "'data.partition.alpha'"),
        (["config", "show", "--set", "runtime.num_workers=0"], "'runtime.num_workers'"),
        (["run", "--set", "data.dataset=imagenet"], "'data.dataset'"),
        (["data", "show", "--set", "clients.num_clients=5000"], "clients"),
        (["data", "show", "--set", "data.partition.kind=natural"], "natural"),
        (["data", "show", "--set", "data.dataset=mnist"], "mnist"),
        (["data", "show", "--set", "data.dataset=cifar10", "--set", "data.data_dir=/nonexistent"],
         "/nonexistent"),
        (["data", "show", "--heatmap", "/nonexistent/dir/h.png"], "/nonexistent/dir"),
    ],
)
def test_bad_cli_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                             fragment: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, fragment)


def test_data_show_prints_partition_and_writes_heatmap(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    png = tmp_path / "heat.png"
    code, out, _ = run_cli(capsys, "data", "show", "--set", "data.dataset=digits", "--set",
                           "clients.num_clients=10", "--set", "data.partition.kind=dirichlet", "--set",
                           "data.partition.alpha=0.5", "--heatmap", str(png))
    assert code == 0
    assert "heatmap written" in out
    assert png.stat().st_size > 1000


def test_console_script_help_and_bad_input() -> None:
    exe = Path(sys.executable).with_name("raypfl")
    ok = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    assert "run" in ok.stdout and "config" in ok.stdout
    bad = subprocess.run([str(exe), "config", "show", "--set", "model.name=bert"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: invalid value 'bert' for 'model.name': expected one of 'cnn', 'vgg11', 'resnet18' or 'mlp'"
    ]

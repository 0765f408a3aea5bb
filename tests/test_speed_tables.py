"""benchmarks.speed's tables: per-pair ratios and medians, with and without the Flower runs."""

from pathlib import Path

from rich.console import Console

from benchmarks.speed import flower_table, table


def _rows() -> list[dict[str, dict[str, float]]]:
    rows = []
    for bare, ray, flower in ((100.0, 80.0, 110.0), (120.0, 90.0, 100.0), (110.0, 100.0, 130.0)):
        rows.append({"bare": {"wall": bare, "round": bare / 20, "steps": 3800, "accuracy": 0.83},
                     "raypfl": {"wall": ray, "round": ray / 25, "startup": 7.0, "rounds": ray - 10,
                                "shutdown": 3.0, "accuracy": 0.84},
                     "flower": {"wall": flower, "round": flower / 20, "startup": 9.0, "accuracy": 0.82}})
    return rows


def _text(renderable: object) -> str:
    console = Console(width=400, record=True)
    console.print(renderable)
    return console.export_text()


def test_speed_table_gives_the_median_of_the_pair_ratios() -> None:
    median = _text(table(_rows(), 3800, Path("w1.yaml"))).splitlines()[-2]
    # ratios 0.800, 0.750, 0.909: the median of the ratios, not the ratio of the medians (90 / 110 = 0.818)
    assert "median" in median and "0.800" in median


def test_flower_table_compares_flower_with_the_bare_loop_and_raypfl() -> None:
    median = _text(flower_table(_rows(), 3800, Path("w1.yaml"))).splitlines()[-2]
    # Flower / bare: 1.100, 0.833, 1.182 → 1.100; raypfl / Flower: 0.727, 0.900, 0.769 → 0.769
    assert "median" in median and "1.100" in median and "0.769" in median

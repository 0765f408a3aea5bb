"""docs/REPRODUCTION.md's tables are what `raypfl compare` makes of the per-trial summaries committed under
docs/reproduction/<sweep>/: the page's own compare commands, run on those files alone, give each table the page
shows (and the compare.md committed beside the summaries)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from raypfl.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "REPRODUCTION.md"


def compare_commands() -> dict[str, list[str]]:
    """The page's `raypfl compare docs/reproduction/<sweep>/*.json ...` commands: their options, by sweep."""
    text = PAGE.read_text().replace("\\\n", " ")
    found = re.findall(r"raypfl compare docs/reproduction/(\w+)/\*\.json ([^\n]*)", text)
    return {sweep: shlex.split(options) for sweep, options in found}


COMMANDS = compare_commands()
WITH_SUMMARIES = sorted(s for s in COMMANDS if any((ROOT / "docs" / "reproduction" / s).glob("*.json")))


def test_the_page_gives_both_sweeps_compare_commands() -> None:
    assert set(COMMANDS) == {"prfl_headline", "fedgmr_restoration"}
    for sweep, options in COMMANDS.items():
        assert options[options.index("--output") + 1] == f"docs/reproduction/{sweep}"


@pytest.mark.parametrize("sweep", WITH_SUMMARIES)
def test_tables_regenerate_from_the_committed_summaries(sweep: str, tmp_path: Path) -> None:
    options = COMMANDS[sweep]
    options[options.index("--output") + 1] = str(tmp_path)
    summaries = sorted((ROOT / "docs" / "reproduction" / sweep).glob("*.json"))
    assert main(["compare", *map(str, summaries), *options]) == 0
    table = (tmp_path / "compare.md").read_text()
    assert table == (ROOT / "docs" / "reproduction" / sweep / "compare.md").read_text()
    assert table in PAGE.read_text()

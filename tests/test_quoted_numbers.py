"""An interval the hand-written prose quotes (README.md and the results' prefaces) is one that a generated file
under results/ holds, or docs/, which keeps the numbers of the grid's earlier states with their dates: after a
rebuild moves a number, prose that still quotes the old one fails here instead of reading as current."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFACES = glob.glob(os.path.join(ROOT, "results", "**", "preface.md"), recursive=True)
PROSE = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in PREFACES if f"{os.sep}runs{os.sep}" not in p)
INTERVAL = re.compile(r"[+-]?\d+\.\d+ \[[+-]?\d+\.\d+, [+-]?\d+\.\d+\]")
# where a generated README's own text starts: what comes before it is its folder's preface, copied in
GENERATED_FROM = ("\n## What these runs support about ", "\n## Where these numbers come from")


def quoted(text: str) -> set[str]:
    return {q.lstrip("+") for q in INTERVAL.findall(text)}   # "+3.42 [..]" and "3.42 [..]" are one number


def generated_part(path: str) -> str:
    text = open(path, encoding="utf-8").read()
    if os.path.basename(path) == "README.md":
        starts = [i for i in (text.find(h) for h in GENERATED_FROM) if i >= 0]
        text = text[min(starts):] if starts else text
    return text


def sources(root: str) -> set[str]:
    found = set()
    for path in glob.glob(os.path.join(root, "results", "**", "*.md"), recursive=True):
        if f"{os.sep}runs{os.sep}" not in path and os.path.basename(path) != "preface.md":
            found |= quoted(generated_part(path))
    for path in glob.glob(os.path.join(root, "docs", "*.md")):
        found |= quoted(open(path, encoding="utf-8").read())
    return found


@pytest.mark.parametrize("page", PROSE)
def test_every_interval_the_prose_quotes_is_one_a_generated_table_or_the_docs_hold(page):
    missing = sorted(quoted(open(os.path.join(ROOT, page), encoding="utf-8").read()) - sources(ROOT))
    assert not missing, f"{page} quotes intervals that no generated file under results/ nor docs/ holds: {missing}"


def test_the_check_reads_only_a_readmes_generated_part_and_catches_a_stale_quote(tmp_path):
    (tmp_path / "results" / "test").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "results" / "preface.md").write_text("craft minus replay +2.89 [0.82, 4.83] and -1.00 [-4.26, 2.50]")
    # the README copies its preface (a stale number there is no source) above its own text
    (tmp_path / "results" / "README.md").write_text(
        "# Results\n\ncraft minus replay +2.89 [0.82, 4.83]\n\n## Where these numbers come from\n\nBWT -9.72 "
        "[-11.88, -7.47]\n")
    (tmp_path / "results" / "test" / "paired.md").write_text("| replay | +3.10 [1.00, 5.00] ** |\n")
    (tmp_path / "docs" / "results.md").write_text("on offline1 alone -1.00 [-4.26, 2.50], a fail (c974648)\n")
    found = sources(str(tmp_path))
    assert found == {"3.10 [1.00, 5.00]", "-1.00 [-4.26, 2.50]", "-9.72 [-11.88, -7.47]"}
    assert quoted((tmp_path / "results" / "preface.md").read_text()) - found == {"2.89 [0.82, 4.83]"}

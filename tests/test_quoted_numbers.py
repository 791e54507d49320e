"""The hand-written prose that opens the results (README.md and each results folder's preface.md) against what the
generators wrote: every interval it quotes (`x [lo, hi]`) is one that a generated file under results/ holds or one
that docs/ records; every other number with two decimals (an AA, a spread) is one that a generated file, a folder's
runs.csv (rounded either way at a half) or docs/ holds; and each generated README holds its folder's preface as
the preface is now.

What this does not check: docs/ is hand-written too (the record of validation readings, `make bench` excerpts and
the grid's earlier states, each with its date), so a number the prose and docs/ share is only shown to agree with
that record, not tied to a generator; hand-written READMEs under results/ (those without the generated line) are
neither checked nor counted as a source. A bare number is checked against every number of those files, so one
mistyped into another number that some table holds passes: it catches a number with no source, not every slip
(of one-digit slips planted in each number on 2026-12-07, about half in results/preface.md; docs/cli.md).
Numbers with one or three decimals (a p-value, a KL) are not checked."""
import csv
import glob
import os
import re

import pytest

from harness.tables import GENERATED_LINE as GENERATED
from harness.tables import PREFACE, read_preface

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a line break may fall inside a quoted interval: it reads as one space
INTERVAL = re.compile(r"[+-]?\d+\.\d+\s+\[[+-]?\d+\.\d+,\s+[+-]?\d+\.\d+\]")
# two decimals, not part of a version (5.23.0), a range's second end (0.93-1.98) or a word
NUMBER = re.compile(r"(?<![\w.-])[+-]?\d+\.\d{2}(?!\d|\.\d)")


def folders_with_a_preface(root: str) -> list[str]:
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "results", "**", PREFACE), recursive=True)
                  if f"{os.sep}runs{os.sep}" not in p)


PROSE = ["README.md"] + [os.path.relpath(os.path.join(d, PREFACE), ROOT) for d in folders_with_a_preface(ROOT)]


def quoted(text: str) -> set[str]:
    # "+3.42 [..]" and "3.42 [..]" are one number
    return {re.sub(r"\s+", " ", q).lstrip("+") for q in INTERVAL.findall(text)}


def numbers(text: str) -> set[str]:
    """The two-decimal numbers of prose outside its intervals (those are checked whole)."""
    return every_number(INTERVAL.sub(" ", text))


def every_number(text: str) -> set[str]:
    """A source's two-decimal numbers, its intervals' too (prose may quote a point alone)."""
    return {n.lstrip("+") for n in NUMBER.findall(text)}


def csv_numbers(path: str) -> set[str]:
    """runs.csv's values as a table would print them: it keeps 4 decimals, so -2.485 may have been -2.4853."""
    found = set()
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f):
            for cell in row:
                try:
                    value = float(cell)
                except ValueError:
                    continue
                found |= {f"{value + nudge:.2f}".replace("-0.00", "0.00") for nudge in (-5e-5, 0.0, 5e-5)}
    return found


def generated_text(path: str) -> str | None:
    """What a generator wrote in a results file: a generated README less its folder's preface as copied in (that
    copy is prose); None for a hand-written README."""
    text = open(path, encoding="utf-8").read()
    if os.path.basename(path) != "README.md":
        return text
    if GENERATED not in text:
        return None
    preface = read_preface(os.path.dirname(path))
    if preface is None:
        return text
    assert preface in text, f"{path} does not hold its preface as it is now: rebuild it (make tables)"
    return text.replace(preface, "")


def sources(root: str, read=quoted) -> set[str]:
    """read: quoted (intervals) or every_number."""
    found = set()
    for path in glob.glob(os.path.join(root, "results", "**", "*.md"), recursive=True):
        if f"{os.sep}runs{os.sep}" not in path and os.path.basename(path) != PREFACE:
            found |= read(generated_text(path) or "")
    if read is every_number:
        for path in glob.glob(os.path.join(root, "results", "**", "runs.csv"), recursive=True):
            if f"{os.sep}runs{os.sep}" not in path:
                found |= csv_numbers(path)
    for path in glob.glob(os.path.join(root, "docs", "*.md")):
        found |= read(open(path, encoding="utf-8").read())
    return found


@pytest.mark.parametrize("page", PROSE)
def test_every_interval_the_prose_quotes_is_one_a_generated_file_or_the_docs_hold(page):
    missing = sorted(quoted(open(os.path.join(ROOT, page), encoding="utf-8").read()) - sources(ROOT))
    assert not missing, f"{page} quotes intervals that no generated file under results/ nor docs/ holds: {missing}"


@pytest.mark.parametrize("page", PROSE)
def test_every_other_two_decimal_number_the_prose_quotes_is_one_a_generated_file_or_the_docs_hold(page):
    missing = sorted(numbers(open(os.path.join(ROOT, page), encoding="utf-8").read()) - sources(ROOT, every_number))
    assert not missing, f"{page} quotes numbers that no generated file under results/, runs.csv nor docs/ holds: " \
                        f"{missing}"


@pytest.mark.parametrize("folder", [os.path.relpath(d, ROOT) for d in folders_with_a_preface(ROOT)])
def test_each_generated_readme_holds_its_preface_and_the_tables_it_quotes_as_they_are_now(folder):
    readme = open(os.path.join(ROOT, folder, "README.md"), encoding="utf-8").read()
    assert GENERATED in readme and read_preface(os.path.join(ROOT, folder)) in readme, \
        f"{folder}/README.md is older than its preface or a table the preface quotes: make tables"


def test_the_check_reads_only_a_readmes_generated_part_and_catches_a_stale_quote(tmp_path):
    (tmp_path / "results" / "test").mkdir(parents=True)
    (tmp_path / "results" / "notes").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "results" / PREFACE).write_text("craft minus replay +2.89 [0.82, 4.83] and -1.00 [-4.26, 2.50]\n")
    # the README copies its preface (a stale number there is no source) above what tables wrote
    (tmp_path / "results" / "README.md").write_text(
        f"# Results\n\n{GENERATED} from ...\n\ncraft minus replay +2.89 [0.82, 4.83] and -1.00 [-4.26, 2.50]\n\n"
        "## Where these numbers come from\n\nBWT -9.72 [-11.88, -7.47]\n")
    (tmp_path / "results" / "test" / "paired.md").write_text("| replay | +3.10 [1.00, 5.00] ** |\n")
    (tmp_path / "results" / "notes" / "README.md").write_text("A hand-written record: 5.00 [1.00, 9.00]\n")
    (tmp_path / "docs" / "results.md").write_text("on offline1 alone -1.00 [-4.26, 2.50], a fail (c974648)\n")
    found = sources(str(tmp_path))
    assert found == {"3.10 [1.00, 5.00]", "-1.00 [-4.26, 2.50]", "-9.72 [-11.88, -7.47]"}
    assert quoted((tmp_path / "results" / PREFACE).read_text()) - found == {"2.89 [0.82, 4.83]"}
    (tmp_path / "results" / PREFACE).write_text("an edited preface\n")   # its README not rebuilt since
    with pytest.raises(AssertionError, match="does not hold its preface as it is now"):
        sources(str(tmp_path))


def test_bare_numbers_are_read_outside_intervals_and_found_in_tables_runs_csv_or_docs(tmp_path):
    prose = ("AA 58.62 and 59.33, BWT -2.49, spread 1.13 (not 3.11.7 nor 0.93-1.98), GEN Δ +4.50\n"
             "[0.42, 8.79] across a line break, ΔAA +7.70 [5.38,\n9.97], a p of 0.031 and 12.5%\n")
    assert numbers(prose) == {"58.62", "59.33", "-2.49", "1.13", "0.93"}
    assert quoted(prose) == {"4.50 [0.42, 8.79]", "7.70 [5.38, 9.97]"}
    (tmp_path / "results" / "test").mkdir(parents=True)
    (tmp_path / "results" / "test" / "main.md").write_text("| craft | 58.62 | +59.33 |\n")
    (tmp_path / "results" / "test" / "runs.csv").write_text("run,AA,BWT\ncraft/6/seed1,56.714,-2.485\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("craft's AA spread 1.13 on 2026-12-06 (c974648)\n")
    found = sources(str(tmp_path), every_number)
    assert {"58.62", "59.33", "1.13", "56.71", "-2.49", "-2.48"} <= found   # -2.485 kept 4 decimals: either way
    assert numbers(prose) - found == {"0.93"}

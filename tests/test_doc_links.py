"""Relative links in the README, docs/ and the results' READMEs lead somewhere: the file exists and, for a
#fragment into a markdown file, one of its headings has that GitHub anchor (text moves between these files, and
a dangling link is silent)."""
import functools
import os
import re

import pytest

from harness.tables import heading_anchors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the committed results' READMEs too: make tables writes them, and their prefaces are written by hand
PAGES = ["README.md", "results/README.md", "results/test/README.md", "results/val/README.md",
         "results/val/tuning/README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


@functools.lru_cache(maxsize=None)
def anchors(path: str) -> frozenset[str]:
    """GitHub's heading anchors, by the rule the results' table markers use too (harness.tables)."""
    return frozenset(slug for _, slug in heading_anchors(open(path, encoding="utf-8").read().splitlines()))


def links(page: str):
    """Inline link and image targets outside code fences (no reference-style links are used here)."""
    text = re.sub(r"```.*?```", "", open(os.path.join(ROOT, page), encoding="utf-8").read(), flags=re.S)
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:", target):   # http:, https:, mailto: are not checked
            yield target


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        file = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
        if not os.path.exists(file):
            broken.append(target)
        elif fragment and file.endswith(".md") and fragment not in anchors(file):
            broken.append(target)
    assert not broken, f"{page}: {broken}"


def test_the_check_reads_anchors_and_links_as_github_does(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# A title\n## Intervals (95%)\n## Intervals (95%)\n## The grid ([test/](test/README.md))\n"
                    "See [x](b.md#a-title), ![fig](f.png) and [site](https://example.org).\n```\n[not](c.md)\n```\n")
    assert anchors(str(page)) == {"a-title", "intervals-95", "intervals-95-1", "the-grid-test"}
    assert [t for t in links(str(page)) if "test/" not in t] == ["b.md#a-title", "f.png"]

"""The sources are self-contained: no file points outside the repository, and every
``docs/<page>.md#anchor`` pointer (in code or between docs pages) names a page and heading that exist."""
from __future__ import annotations

import os
import re
import subprocess
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
# Built from parts so that this file matches neither its own search nor a plain grep for them.
FORBIDDEN = ("ALGO" + "RITHMS.md", ".." + "/shared")
POINTER = re.compile(r"docs/([A-Za-z0-9_\-]+)\.md(?:#([A-Za-z0-9_\-]+))?")
RELATIVE_LINK = re.compile(r"\]\(([A-Za-z0-9_\-]+)\.md(?:#([A-Za-z0-9_\-]+))?\)")
SAME_PAGE_LINK = re.compile(r"\]\(#([A-Za-z0-9_\-]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation dropped (word characters, spaces and hyphens
    stay), each space a hyphen. Inline code marks are dropped like other punctuation."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_of(text: str) -> Set[str]:
    """Heading ids of a Markdown page; fenced code blocks hold no headings."""
    found, fenced = set(), False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            found.add(github_anchor(match.group(1)))
    return found


def tracked_files() -> List[str]:
    """Files git tracks (relative paths); without git, every file under the root but .git."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        paths = [p for p in listing.stdout.decode().split("\0") if p]
        if paths:
            return [p for p in paths if os.path.isfile(os.path.join(ROOT, p))]
    except (OSError, subprocess.CalledProcessError):
        pass
    paths = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d != ".git"]
        paths += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files]
    return paths


def read_text(relative: str):
    try:
        with open(os.path.join(ROOT, relative), encoding="utf-8") as stream:
            return stream.read()
    except (UnicodeDecodeError, OSError):
        return None  # binary files (images, archives) hold no pointers


def in_docs(relative: str) -> bool:
    return relative.replace(os.sep, "/").startswith("docs/")


def doc_pages() -> Dict[str, Set[str]]:
    pages = {}
    for name in sorted(os.listdir(DOCS)):
        if name.endswith(".md"):
            with open(os.path.join(DOCS, name), encoding="utf-8") as stream:
                pages[name[:-3]] = anchors_of(stream.read())
    return pages


def broken_pointers(pointers: List[Tuple[str, str, str]], pages: Dict[str, Set[str]]) -> List[str]:
    """(where, page, anchor) triples that name a missing page or heading."""
    broken = []
    for where, page, anchor in pointers:
        if page not in pages:
            broken.append(f"{where}: docs/{page}.md does not exist")
        elif anchor and anchor not in pages[page]:
            broken.append(f"{where}: docs/{page}.md has no heading with id '{anchor}'")
    return broken


# ---- the checks on the repository --------------------------------------------------------------
def lines_outside_docs():
    """(file, line number, line) of every tracked text file outside docs/."""
    for relative in tracked_files():
        text = None if in_docs(relative) else read_text(relative)
        for number, line in enumerate((text or "").splitlines(), 1):
            yield relative, number, line


def test_no_file_outside_docs_points_outside_the_repository():
    offending = [f"{relative}:{number}: {line.strip()}" for relative, number, line in lines_outside_docs()
                 if any(word.lower() in line.lower() for word in FORBIDDEN)]
    assert not offending, "references to files outside the repository:\n" + "\n".join(offending)


def test_docs_pages_do_not_cite_the_outside_file_either():
    offending = [name for name in os.listdir(DOCS) if name.endswith(".md")
                 and FORBIDDEN[0].lower() in open(os.path.join(DOCS, name), encoding="utf-8").read().lower()]
    assert not offending


def test_every_docs_pointer_in_the_code_names_an_existing_heading():
    pages = doc_pages()
    pointers = [(f"{relative}:{number}", match.group(1), match.group(2) or "")
                for relative, number, line in lines_outside_docs() for match in POINTER.finditer(line)]
    assert len(pointers) >= 40, "the code's pointers into docs/ were not found: is the pattern wrong?"
    broken = broken_pointers(pointers, pages)
    assert not broken, "\n".join(broken)


def test_links_between_docs_pages_resolve():
    pages = doc_pages()
    pointers = []
    for page in pages:
        with open(os.path.join(DOCS, page + ".md"), encoding="utf-8") as stream:
            text = stream.read()
        for match in RELATIVE_LINK.finditer(text):
            pointers.append((f"docs/{page}.md", match.group(1), match.group(2) or ""))
        for match in SAME_PAGE_LINK.finditer(text):
            pointers.append((f"docs/{page}.md", page, match.group(1)))
    broken = broken_pointers(pointers, pages)
    assert not broken, "\n".join(broken)


def test_each_docs_page_has_unique_headings():
    """A repeated heading would get a '-1' id on GitHub, and a pointer to it would land on the first."""
    for name in os.listdir(DOCS):
        if not name.endswith(".md"):
            continue
        with open(os.path.join(DOCS, name), encoding="utf-8") as stream:
            lines = [line for line in stream.read().splitlines() if HEADING.match(line)]
        ids = [github_anchor(HEADING.match(line).group(1)) for line in lines]
        assert len(ids) == len(set(ids)), f"docs/{name}: repeated headings {sorted({i for i in ids if ids.count(i) > 1})}"


# ---- the checker itself ------------------------------------------------------------------------
@pytest.mark.parametrize("heading, anchor", [
    ("Teacher labels", "teacher-labels"),
    ("Queues and k-means refresh", "queues-and-k-means-refresh"),
    ("Classifier re-training (cRT)", "classifier-re-training-crt"),
    ("Stage 2 on ImageNet-LT and iNaturalist", "stage-2-on-imagenet-lt-and-inaturalist"),
    ("Known bugs: the `--use-norm` flag!", "known-bugs-the---use-norm-flag"),
])
def test_github_anchor_rule(heading, anchor):
    assert github_anchor(heading) == anchor


def test_checker_reports_a_missing_page_and_a_missing_heading():
    pages = {"lcsl": anchors_of("# LCSL\n\n## Teacher labels\n\n```\n## not a heading\n```\n")}
    assert pages["lcsl"] == {"lcsl", "teacher-labels"}
    pointers = [("a.py:1", "lcsl", "teacher-labels"), ("a.py:2", "lcsl", "not-a-heading"),
                ("a.py:3", "bccl", ""), ("a.py:4", "lcsl", "")]
    assert broken_pointers(pointers, pages) == [
        "a.py:2: docs/lcsl.md has no heading with id 'not-a-heading'",
        "a.py:3: docs/bccl.md does not exist"]


def test_pointer_pattern_reads_page_and_anchor():
    line = "# see docs/semi_self.md#unlabelled-set-sizes, and docs/data.md."
    assert [m.groups() for m in POINTER.finditer(line)] == [("semi_self", "unlabelled-set-sizes"), ("data", None)]

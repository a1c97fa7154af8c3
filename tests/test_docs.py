"""The documentation stays true: the configuration page is current and names every option,
the site builds with no broken link, and the README stays a front page."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from markdown.extensions.toc import slugify

from seq2seq.config import Config

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_page_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "config_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_option_is_documented():
    docs = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    options = [f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
               for f in dataclasses.fields(section.default_factory)]
    assert len(options) > 100
    missing = [o for o in options if f"`{o}`" not in docs]
    assert not missing, missing


def test_the_site_builds_without_a_broken_link(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_the_tour_links_to_headings_that_exist():
    """The notebook is not part of the site's build, which checks the pages' anchors: its links
    into the docs are checked here, against the anchors the site gives the headings."""
    cells = json.loads((ROOT / "docs" / "tour.ipynb").read_text(encoding="utf-8"))["cells"]
    text = "".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
    targets = re.findall(r"\]\(([^)\s]*\.md[^)\s]*)\)", text)
    links = [re.fullmatch(r"(\w+\.md)(?:#([\w-]+))?", target) for target in targets]
    assert len(links) > 5 and all(links), targets  # every link to a page in the form checked here
    for page, anchor in (link.groups() for link in links):
        anchors, fenced = set(), False
        for line in (ROOT / "docs" / page).read_text(encoding="utf-8").splitlines():
            fenced ^= line.startswith("```")
            if line.startswith("#") and not fenced:  # a heading, not a comment in a code block
                anchors.add(slugify(line.lstrip("#").strip().replace("`", ""), "-"))
        assert not anchor or anchor in anchors, f"docs/tour.ipynb links to {page}#{anchor}, a heading that is gone"


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160
    commands = [line for line in lines[:20] if line.startswith("python3 -m venv .venv")]
    setup = "python3 -m venv .venv && .venv/bin/pip install -e"
    assert commands == [f"{setup} . && .venv/bin/python experiments/translate.py",
                        f"{setup} '.[dev]' && .venv/bin/python -m pytest"]

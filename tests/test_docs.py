"""The documentation runs: every Python block of README.md and docs/*.md is executed (mktestdocs), page by page in
order with shared state, in a scratch folder that sees the repository's `recipes/` (the embedded digits)."""

import re
from pathlib import Path

import pytest
from mktestdocs import check_md_file, grab_code_blocks

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WITH_CODE = [page for page in PAGES if grab_code_blocks(page.read_text(), lang="python")]


@pytest.mark.parametrize("page", WITH_CODE, ids=lambda page: page.name)
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    check_md_file(page, memory=True)


def test_readme_is_a_page_that_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = set(re.findall(r"\]\((docs/[\w.]+\.md)\)", readme))
    assert linked == {f"docs/{page.name}" for page in PAGES[1:]}
    assert {page.name for page in WITH_CODE} >= {"README.md", "usage.md", "modes.md"}

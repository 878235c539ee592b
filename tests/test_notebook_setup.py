"""colab.ipynb's setup cell finds the project without REPO_URL, or says what to set."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[dev]')")

REPO = Path(__file__).resolve().parents[1]


def setup_cells() -> str:
    nb = nbformat.read(REPO / "colab.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    return code[0] + "\n" + code[1]  # the parameters, then the setup


def run_setup(cwd: Path, monkeypatch) -> dict:
    """The two cells run in this process from ``cwd`` (cwd and sys.path restored afterwards)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    scope: dict = {}
    exec(compile(setup_cells(), "colab.ipynb", "exec"), scope)
    return scope


def test_a_checkout_one_folder_below_is_found_without_repo_url(tmp_path, monkeypatch, capsys):
    (tmp_path / "avalanche-onehead").symlink_to(REPO, target_is_directory=True)
    scope = run_setup(tmp_path, monkeypatch)
    assert scope["REPO"] == tmp_path / "avalanche-onehead" and Path(os.getcwd()).resolve() == REPO
    assert "checkout:" in capsys.readouterr().out


def test_no_checkout_and_no_repo_url_stops_with_what_to_set(tmp_path, monkeypatch):
    with pytest.raises(Exception) as info:
        run_setup(tmp_path, monkeypatch)
    assert type(info.value).__name__ == "NotebookStop"
    msg = str(info.value)
    assert "REPO_URL" in msg and "REPO_DIR" in msg and "unzip" in msg

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


def train_cell() -> str:
    nb = nbformat.read(REPO / "colab.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and "--resume" in c.source)


@pytest.mark.parametrize("files, want", [
    ((), ["--out"]),  # a new folder: a new run
    (("config.json",), ["--out", "--overwrite"]),  # stopped before its first epoch ended: start again
    (("config.json", "resume_epoch.pt"), ["--resume"]),  # stopped inside stage 1, after an epoch
    (("config.json", "resume.pt"), ["--resume"]),  # stopped after a finished stage
    (("config.json", "resume.pt", "metrics.json"), None),  # finished: nothing runs
])
def test_the_train_cell_resumes_whatever_the_run_folder_can_continue(tmp_path, files, want):
    """The notebook asks the run folder (RunFolder) what it holds, not a file name of its own."""
    run = tmp_path / "run"
    if files:
        run.mkdir()
        for name in files:
            (run / name).write_text("{}")
    calls: list = []
    scope = {"RUN_DIR": str(run), "RUNS_ON_DRIVE": False, "IN_COLAB": False, "AVALANCHE_LOG": False,
             "DATA_ROOT": "data", "SMALL": False, "EXTRA_ARGS": [], "Path": Path, "sys": sys,
             "sh": lambda *cmd: calls.append([str(c) for c in cmd])}
    exec(compile(train_cell(), "colab.ipynb", "exec"), scope)
    if want is None:
        assert calls == []
        return
    (cmd,) = calls
    assert cmd[1] == "experiments/run.py" and all(flag in cmd for flag in want)
    assert ("--overwrite" in cmd) == ("--overwrite" in want) and ("--resume" in cmd) == ("--resume" in want)

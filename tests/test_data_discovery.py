"""The real-data tests find the mini-datasets in $ONEHEAD_DATA, <repo>/data or ../shared/data."""
from __future__ import annotations

import conftest


def _root(path, synthetic=False):
    for t in conftest.TASK_FOLDERS:
        (path / t).mkdir(parents=True)
    if synthetic:
        (path / "SYNTHETIC.txt").write_text("synthetic")
    return path


def test_repo_data_then_shared_data(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEHEAD_DATA", raising=False)
    repo_data, shared = tmp_path / "repo" / "data", _root(tmp_path / "shared" / "data")
    monkeypatch.setattr(conftest, "REAL_DATA_PLACES", (repo_data, shared))
    assert conftest.find_real_data()[0] == shared.resolve()
    _root(repo_data)
    assert conftest.find_real_data()[0] == repo_data.resolve()


def test_environment_variable_wins_and_synthetic_roots_do_not_count(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "REAL_DATA_PLACES", (_root(tmp_path / "data"),))
    mine = _root(tmp_path / "mine")
    monkeypatch.setenv("ONEHEAD_DATA", str(mine))
    assert conftest.find_real_data()[0] == mine.resolve()
    monkeypatch.setenv("ONEHEAD_DATA", str(_root(tmp_path / "synth", synthetic=True)))
    root, why = conftest.find_real_data()
    assert root is None and "ONEHEAD_DATA" in why

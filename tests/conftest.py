"""Shared fixtures: an isolated cache for the synthetic benchmark and the real mini-datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def onehead_cache(tmp_path_factory) -> Path:
    """Point ONEHEAD_CACHE at a fresh folder for the whole session (restored afterwards)."""
    cache = tmp_path_factory.mktemp("onehead-cache")
    old = os.environ.get("ONEHEAD_CACHE")
    os.environ["ONEHEAD_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("ONEHEAD_CACHE", None)
    else:
        os.environ["ONEHEAD_CACHE"] = old


@pytest.fixture(scope="session")
def synthetic_root(onehead_cache) -> Path:
    """The embedded synthetic benchmark (seed 0), generated once into the session cache.

    Shared by every test: copy it (``shutil.copytree``) before modifying anything.
    """
    import benchmarks

    return benchmarks.synthetic_root(0)


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real mini-datasets (``<repo>/../shared/data``); tests using it skip when absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real mini-datasets not found at {REAL_DATA}")
    return REAL_DATA


def load_script(relative: str):
    """Import one of the project's scripts (``experiments/run.py``, ``eval.py``) as a module."""
    import importlib.util

    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(f"onehead_script_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def run_cli():
    """``experiments/run.py`` as a module (``main``, ``make_config``, ``build_parser``)."""
    return load_script("experiments/run.py")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Shared fixtures: an isolated cache for the synthetic benchmark and the real mini-datasets."""
from __future__ import annotations

import avalanche_onehead.commands.run
from avalanche_onehead import commands

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: where the real mini-datasets are looked for, in this order ($ONEHEAD_DATA first)
REAL_DATA_PLACES = (REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data")
TASK_FOLDERS = ("mini_coco_det", "mini_voc_seg", "imagenette_160")


def find_real_data() -> tuple[Path | None, str]:
    """The real mini-datasets' root, or None and why not: ``$ONEHEAD_DATA`` if set, else
    ``<repo>/data``, else ``<repo>/../shared/data``; a root must hold the three task folders
    and not be the synthetic benchmark."""
    env = os.environ.get("ONEHEAD_DATA")
    places = [Path(env).expanduser()] if env else list(REAL_DATA_PLACES)
    for place in places:
        if place.is_dir() and not (place / "SYNTHETIC.txt").is_file() and all(
                (place / t).is_dir() for t in TASK_FOLDERS):
            return place.resolve(), ""
    where = f"$ONEHEAD_DATA={env}" if env else " or ".join(str(p) for p in REAL_DATA_PLACES)
    return None, f"real mini-datasets ({', '.join(TASK_FOLDERS)}) not found in {where}"


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
    """The real mini-datasets (see :func:`find_real_data`); tests using it skip when absent."""
    root, why = find_real_data()
    if root is None:
        pytest.skip(why)
    return root


@pytest.fixture(scope="session")
def run_cli():
    """The run command (``experiments/run.py``, ``onehead-run``): ``main``, ``make_config``, ``parse_args``."""
    import avalanche_onehead.commands.run

    return avalanche_onehead.commands.run


@pytest.fixture
def refused(capsys):
    """``refused(main, argv)``: the command exits with code 2 and one line on stderr, returned."""
    def check(main, argv) -> str:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1, err
        return err
    return check


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def open_default_recipe() -> dict:
    """experiments/configs/frozen.json (the frozen-feature recipe, whose every stage moves the
    shared layers; the default's classification stage moves only its own rows, so no remedy acts
    there) with no stage plan naming its remedies (so every remedy of the strategy acts in every
    stage): the base the remedy-placement tests build on.  A fresh copy per test, free to edit."""
    import json

    recipe = json.loads((REPO_ROOT / "experiments" / "configs" / "frozen.json").read_text())
    recipe["plan"] = {t: {k: v for k, v in p.items() if k != "remedies"} for t, p in recipe["plan"].items()}
    return recipe

"""The commands: each module parses its arguments, calls the library and prints.

This is the layer that drives runs, so it may import ``benchmarks`` and ``strategies`` (the
rest of ``avalanche_onehead`` does not at import time).  The scripts in ``experiments/`` and
``eval.py``, and the console commands of ``pyproject.toml`` (``onehead-run``, ...), call
their ``main`` and hold no logic of their own.
"""

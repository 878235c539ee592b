#!/usr/bin/env python
"""Avalanche's training overhead against a plain PyTorch loop (also: onehead-bench-overhead).

The command lives in ``avalanche_onehead.commands.bench_overhead``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.bench_overhead import main

if __name__ == "__main__":
    sys.exit(main())

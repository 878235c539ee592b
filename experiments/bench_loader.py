#!/usr/bin/env python
"""Data-loader throughput (also: onehead-bench-loader).

The command lives in ``avalanche_onehead.commands.bench_loader``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.bench_loader import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Compare forgetting remedies on the same seed and data (also: onehead-compare).

The command lives in ``avalanche_onehead.commands.compare``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.compare import main

if __name__ == "__main__":
    sys.exit(main())

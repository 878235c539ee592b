#!/usr/bin/env python
"""Linear probes of a checkpoint's features (also: onehead-probe).

The command lives in ``avalanche_onehead.commands.probe``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.probe import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Train the one-head model over the task stream and write a run folder (also: onehead-run).

The command lives in ``avalanche_onehead.commands.run``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.run import main

if __name__ == "__main__":
    sys.exit(main())

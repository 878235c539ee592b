#!/usr/bin/env python
"""Build report.md and its figures from run folders (also: onehead-report).

The command lives in ``avalanche_onehead.commands.report``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.report import main

if __name__ == "__main__":
    sys.exit(main())

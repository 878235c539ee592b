#!/usr/bin/env python
"""Summarise the seeds of one recipe (also: onehead-summarize).

The command lives in ``avalanche_onehead.commands.summarize``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.summarize import main

if __name__ == "__main__":
    sys.exit(main())

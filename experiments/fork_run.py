#!/usr/bin/env python
"""Another remedy, or longer later stages, from a run's finished stages (also: onehead-fork).

The command lives in ``avalanche_onehead.commands.fork``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.fork import main

if __name__ == "__main__":
    sys.exit(main())

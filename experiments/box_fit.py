#!/usr/bin/env python
"""How well a checkpoint sizes and names its boxes (also: onehead-box-fit).

The command lives in ``avalanche_onehead.commands.box_fit``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.box_fit import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Predict on your own images (also: onehead-predict).

The command lives in ``avalanche_onehead.commands.predict``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())

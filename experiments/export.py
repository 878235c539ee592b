#!/usr/bin/env python
"""Export a checkpoint to ONNX, checked against PyTorch (also: onehead-export).

The command lives in ``avalanche_onehead.commands.export``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.export import main

if __name__ == "__main__":
    sys.exit(main())

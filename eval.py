#!/usr/bin/env python
"""The TA's command: evaluate a one-head checkpoint, print a JSON object with "mAP", "mIoU", "Top-1".

    python eval.py --weights your_model.pt --data_root data --tasks all

The command lives in ``avalanche_onehead.commands.evaluate`` (also: onehead-eval); ``--help`` says more.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runs from a checkout without installing it

from avalanche_onehead.commands.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

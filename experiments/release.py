#!/usr/bin/env python
"""Release a run's final model as the repository's checkpoint (also: onehead-release).

The command lives in ``avalanche_onehead.commands.release``; ``--help`` says what it does.
"""
import sys

from avalanche_onehead.commands.release import main

if __name__ == "__main__":
    sys.exit(main())

import sys

from .cli import main

# Guarded: worker processes (spawned, see data/worlds.py) import this module again.
if __name__ == "__main__":
    sys.exit(main())

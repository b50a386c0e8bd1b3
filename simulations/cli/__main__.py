"""``python -m simulations.cli``: the ``fedinterest`` command."""

import sys

from simulations.cli import main

if __name__ == "__main__":
    sys.exit(main())

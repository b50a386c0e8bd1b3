"""``python -m simulations.benchmark [--quick] [--only SECTION]...``"""

import sys

from simulations.benchmark.runner import main

if __name__ == "__main__":
    sys.exit(main())

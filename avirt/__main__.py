"""``python -m avirt``: the same command line as the ``avirt`` executable (see :mod:`avirt.cli`)."""

import sys

from avirt.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m imgcls ...` is the same program as the `imgcls` console script (torchrun launches it so)."""

import sys

from imgcls.cli import main

if __name__ == "__main__":
    sys.exit(main())

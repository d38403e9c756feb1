"""Build the native CPU kernels (``kernels/cpu``) with the machine's compiler; ``make setup`` runs it.

    python scripts/build_native.py

A missing compiler or a failed build is reported and leaves the XLA path in use; it never fails setup.
"""

import sys

from kernels.cpu import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m broker``: the broker process (see broker/process.py)."""

import sys

from broker.process import main

if __name__ == "__main__":
    sys.exit(main())

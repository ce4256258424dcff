"""``python -m agents.vm --config FILE --ready-fd N``: one VM process (docs/contracts.md)."""

from __future__ import annotations

import sys

from .runtime import main

if __name__ == "__main__":
    sys.exit(main())

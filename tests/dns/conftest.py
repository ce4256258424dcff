"""tests/dns runs the DNS server over tests/vm's in-process fabric (vm_loopnet)."""

import sys
from pathlib import Path

_VM_TESTS = str(Path(__file__).resolve().parent.parent / "vm")
if _VM_TESTS not in sys.path:
    sys.path.insert(0, _VM_TESTS)

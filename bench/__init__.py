"""firecron's benchmarks: ``python -m bench`` (``make bench``).

tests/ goes on the import path here, once: the benchmarks reuse its harnesses (sinks,
emulators, worker processes), which are modules of a folder, not a package.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

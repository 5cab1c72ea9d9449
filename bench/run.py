"""Benchmark entry point: ``python bench/run.py [--quick] [--only CASE] [--no-peers]``.

``make bench`` runs it with the project's virtualenv.  See bench/suite.py
for the options and docs/performance.md for the cases and the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    # Run as a script, so the repository root is not on sys.path yet.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.suite import main as suite_main

    return suite_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""Instructions per request of an in-process bench script, under cachegrind.

    python bench/count_instructions.py [--tree DIR] bench/request_path.py [its options]
    python bench/count_instructions.py bench/request_floor.py --stack web

CPU time on this shared two-core machine moves by 20-40 % between runs of
the same code, which hides a change of a few per cent.  The number of
instructions executed does not: this runs *script* under ``valgrind
--tool=cachegrind`` twice, with ``--requests`` 100 and 400 (one round
each, the hash seed fixed), and prints ``(I(400) - I(100)) / 300``: the
instructions of one request, start-up and warm-up left out.  Slow (about
a minute) and needs valgrind (Debian's ``valgrind`` package).  Compare
trees with ``--tree``; an instruction is not a fixed time, so read the
ratio, not a duration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = (100, 400)
TOTAL = re.compile(rb"I\s+refs:\s+([\d,]+)")


def instructions(python: str, script: Path, args: list[str], tree: Path | None, requests: int) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                f"--cachegrind-out-file={Path(scratch) / 'out'}",
                python,
                str(script),
                "--requests",
                str(requests),
                "--rounds",
                "1",
                *args,
            ],
            env=env,
            capture_output=True,
            check=False,
        )
    found = TOTAL.findall(done.stderr)
    if done.returncode != 0 or not found:
        raise SystemExit(f"{script} under valgrind failed ({done.returncode}): {done.stderr[-600:].decode(errors='replace')}")
    return int(found[-1].replace(b",", b""))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="the source tree to measure (PYTHONPATH); the installed code if not given")
    parser.add_argument("script", type=Path)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own options")
    options = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    small, large = (instructions(sys.executable, options.script, options.args, options.tree, size) for size in SIZES)
    per_request = (large - small) / (SIZES[1] - SIZES[0])
    print(
        json.dumps(
            {
                "script": str(options.script),
                "args": options.args,
                "tree": str(options.tree) if options.tree else None,
                "instructions_per_request": round(per_request),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

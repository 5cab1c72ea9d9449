"""Summarise a py-spy ``--format raw`` profile: the functions where the time goes.

    python bench/profile_summary.py profiles/throughput-1.txt [--top 40]

``bench/run.py --profile DIR --profile-format raw`` writes such files (one
per case).  Prints, for the most sampled functions, the share of samples in
which each appears anywhere on the stack (inclusive) and at the top (self),
with site-packages paths shortened.  Samples of threads waiting (in
``Condition.wait`` or the reactor's ``epoll``) are left out.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_SITE = re.compile(r" \(/.*?site-packages/")
# Leaf frames that mean a thread was waiting, not working: left out of the
# shares (py-spy samples the job-store and reactor pool threads as they wait).
_WAITING = frozenset(
    {
        "Condition.wait (threading.py)",
        "EPollReactor.doPoll (twisted/internet/epollreactor.py)",
    }
)
_LINE = re.compile(r":\d+\)$")


def _name(frame: str) -> str:
    return _LINE.sub(")", _SITE.sub(" (", frame))


def summarise(path: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_name(frame) for frame in stack.split(";")]
        if frames[-1] in _WAITING:
            waiting += samples
            continue
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} busy samples ({waiting} waiting, left out)", "-- inclusive"]
    lines += [f"{count * 100 / total:5.1f}%  {frame}" for frame, count in inclusive.most_common(top)]
    lines.append("-- self")
    lines += [f"{count * 100 / total:5.1f}%  {frame}" for frame, count in own.most_common(top // 2)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    for path in args.profile:
        print(summarise(path, args.top))


if __name__ == "__main__":
    main()

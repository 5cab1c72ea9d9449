"""Where a round's CPU went, per job, read from ``/proc``.

The issue asks, for a target not met, where the CPU goes per job in
microseconds: the scheduler, the agents, the client, the kernel.  A
``CpuLedger`` takes a snapshot when it is made and, given the jobs of the
round, splits what was spent since into

- the scheduler's reactor thread (the main thread: its task id is the
  process id) and its other threads together (the job store's thread,
  Twisted's thread pool), each in user and kernel time;
- the worker agents (user and kernel) and the commands they ran (their
  reaped children, ``cutime``/``cstime``);
- this process, the client (its HTTP submitters and the poll of
  ``/metrics``), from ``getrusage``;
- the whole machine (``/proc/stat``): busy time on every core, whoever
  spent it, so what the parts above leave is visible.  On a shared
  machine that remainder includes other people's work.
"""

from __future__ import annotations

import os
import resource
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Split:
    """CPU seconds in user and kernel mode."""

    user: float = 0.0
    system: float = 0.0

    def __add__(self, other: Split) -> Split:
        return Split(self.user + other.user, self.system + other.system)

    def __sub__(self, other: Split) -> Split:
        return Split(self.user - other.user, self.system - other.system)


def _stat_fields(path: str) -> list[str]:
    with open(path) as stat:
        # The command name may hold spaces; fields resume after its ')'.
        return stat.read().rsplit(")", 1)[1].split()


def _ticks(fields: list[str], user: int, system: int) -> Split:
    return Split(int(fields[user]) / CLOCK_TICKS, int(fields[system]) / CLOCK_TICKS)


def process_split(pid: int) -> tuple[Split, Split]:
    """(the process itself, its reaped children) since they started."""
    fields = _stat_fields(f"/proc/{pid}/stat")
    return _ticks(fields, 11, 12), _ticks(fields, 13, 14)


def main_thread_split(pid: int) -> Split:
    """The CPU so far of *pid*'s main thread (its task id is the process id)."""
    return _ticks(_stat_fields(f"/proc/{pid}/task/{pid}/stat"), 11, 12)


def machine_busy() -> float:
    """Seconds every core of the machine spent not idle, since boot."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user).
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def own_split() -> Split:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Split(usage.ru_utime, usage.ru_stime)


@dataclass(frozen=True)
class _Snapshot:
    scheduler: Split
    reactor: Split
    agents: Split
    commands: Split
    client: Split
    machine: float


class CpuLedger:
    """CPU per job over a round, from its start (the ledger's making) to ``per_job``."""

    def __init__(self, scheduler_pid: int, agent_pids: Iterable[int] = ()) -> None:
        self.scheduler_pid = scheduler_pid
        self.agent_pids = list(agent_pids)
        self._start = self._snapshot()

    def _snapshot(self) -> _Snapshot:
        agents = commands = Split()
        for pid in self.agent_pids:
            own, children = process_split(pid)
            agents, commands = agents + own, commands + children
        return _Snapshot(
            process_split(self.scheduler_pid)[0],
            main_thread_split(self.scheduler_pid),
            agents,
            commands,
            own_split(),
            machine_busy(),
        )

    def per_job(self, jobs: int) -> dict[str, float]:
        """Microseconds per job, by part: ``<part> user`` and ``<part> kernel`` for each process part, and the machine's."""
        end = self._snapshot()
        reactor = end.reactor - self._start.reactor

        def us(seconds: float) -> float:
            return round(seconds / jobs * 1e6, 1)

        parts: Mapping[str, Split] = {
            "scheduler reactor thread": reactor,
            # The process less its reactor thread: from the process's own
            # total, so threads that ended within the round still count.
            "scheduler other threads": end.scheduler - self._start.scheduler - reactor,
            "agents": end.agents - self._start.agents,
            "commands": end.commands - self._start.commands,
            "client": end.client - self._start.client,
        }
        ledger: dict[str, float] = {}
        for name, split in parts.items():
            ledger[f"{name} user"] = us(split.user)
            ledger[f"{name} kernel"] = us(split.system)
        accounted = sum(split.user + split.system for split in parts.values())
        machine = end.machine - self._start.machine
        ledger["machine"] = us(machine)
        ledger["machine less the parts above"] = us(machine - accounted)
        return ledger


def part_us(ledger: Mapping[str, float], part: str) -> float:
    """A part's user and kernel µs together; "scheduler" sums its threads."""
    return sum(value for name, value in ledger.items() if name.startswith(part) and name.endswith(("user", "kernel")))


def median_ledger(ledgers: list[dict[str, float]]) -> dict[str, float]:
    """Each entry's median over the rounds."""
    if not ledgers:
        return {}
    return {name: statistics.median(ledger[name] for ledger in ledgers) for name in ledgers[0]}


def describe(ledger: Mapping[str, float]) -> str:
    """One line: each part's user + kernel µs per job."""
    parts = [name[: -len(" user")] for name in ledger if name.endswith(" user")]
    shown = [f"{part} {ledger[part + ' user']:.0f}+{ledger[part + ' kernel']:.0f}" for part in parts]
    return "µs per job (user+kernel): " + ", ".join(shown) + f"; machine {ledger['machine']:.0f}"

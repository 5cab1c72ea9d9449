"""scheduler.worker_registry: placement by its index, against a plain pass over every worker.

``WorkerRegistry.place`` answers ``any`` from a heap kept as workers'
running jobs change, and ``has_free_slot`` from a running total.  The
rule they must keep is the one a pass over every worker gives: the
fewest running jobs, then the most free slots, then the lowest name,
never the worker to avoid, and only one with a free slot.  Hypothesis
drives a registry through connections, replacements, departures and
jobs placed and ended, and checks both answers after every step.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.worker_registry import RunningJobs, Worker, WorkerRegistry
from tests.fakes import FakeLink

NAMES = ("a", "b", "c", "d", "e")


def by_hand(registry: WorkerRegistry, avoid: str | None) -> Worker | None:
    """The rule, as a pass over every worker."""
    room = [worker for worker in registry if worker.free > 0 and worker.name != avoid]
    return min(room, key=lambda worker: (len(worker.running), -worker.free, worker.name), default=None)


def worker(name: str, slots: int, running: set[int] | None = None) -> Worker:
    return Worker(name, frozenset(), slots, FakeLink(), 0.0, running=RunningJobs(running or ()))


steps = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.sampled_from(NAMES), st.integers(0, 4)),
        st.tuples(st.just("leave"), st.sampled_from(NAMES), st.just(0)),
        st.tuples(st.just("place"), st.sampled_from((*NAMES, "")), st.just(0)),
        st.tuples(st.just("end"), st.sampled_from(NAMES), st.just(0)),
        st.tuples(st.just("end all"), st.sampled_from(NAMES), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_place_and_has_free_slot_agree_with_a_pass_over_every_worker(script: list[tuple[str, str, int]]) -> None:
    registry = WorkerRegistry()
    next_job = iter(range(1, 10_000))
    for action, name, slots in script:
        current = registry.get(name)
        if action == "connect":
            # A new connection under a name takes over its running jobs.
            registry.add(worker(name, slots))
        elif action == "leave" and current is not None:
            registry.remove(current)
        elif action == "place":
            chosen = registry.place("any", avoid=name or None)
            assert chosen is by_hand(registry, name or None)
            if chosen is not None:
                chosen.running.add(next(next_job))
        elif action == "end" and current is not None and current.running:
            current.running.discard(min(current.running))
        elif action == "end all" and current is not None:
            current.running.clear()
        assert registry.place("any") is by_hand(registry, None)
        assert registry.has_free_slot() == any(each.free > 0 for each in registry)


def test_a_worker_that_left_is_not_placed_on_even_when_its_jobs_end() -> None:
    registry = WorkerRegistry()
    gone = worker("a", 2)
    registry.add(gone)
    registry.add(worker("b", 1, {7}))
    registry.remove(gone)
    gone.running.add(1)
    gone.running.discard(1)  # a late report of the old connection
    assert registry.place("any") is None
    assert not registry.has_free_slot()


def test_a_plain_set_of_running_jobs_is_indexed_too() -> None:
    registry = WorkerRegistry()
    registry.add(Worker("a", frozenset(), 2, FakeLink(), 0.0, running={1}))
    registry.add(worker("b", 2))
    assert registry.place("any") is registry.get("b")
    registry.get("a").running.discard(1)  # type: ignore[union-attr]
    assert registry.place("any") is registry.get("a")

"""scheduler.leader_lease: who fires, decided on task.Clock against a store that
behaves as the lease row does (expiry by the store's clock, takeover when the
holder's session is gone, epoch + 1 on every takeover)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from scheduler.leader_lease import EMBEDDED_EPOCH, LeaderLease, LeaseState, SoleLeader


@dataclass
class Row:
    node: str | None = None
    epoch: int = 0
    expires: float = 0.0
    since: float | None = None


@dataclass
class FakeLeaseStore:
    """The lease row's rules (``_LEASE_STEP`` in job_history/postgres.py), timed by *clock*."""

    clock: Clock
    row: Row = field(default_factory=Row)
    # Nodes whose database session has ended (a crash, a terminated backend).
    gone: set[str] = field(default_factory=set)
    # Nodes whose requests go unanswered (a frozen process, a lost database).
    stalled: set[str] = field(default_factory=set)
    down: bool = False
    pending: list[Deferred[LeaseState]] = field(default_factory=list)

    def attempt(self, node: str, epoch: int | None, lease: float) -> Deferred[LeaseState]:
        if self.down:
            return fail(ConnectionError("database unreachable"))
        if node in self.stalled:
            waiting: Deferred[LeaseState] = Deferred()
            self.pending.append(waiting)
            return waiting
        self.gone.discard(node)  # asking again is a new session
        now = self.clock.seconds()
        row = self.row
        renew = row.node == node and row.epoch == epoch
        if renew or row.node is None or row.expires < now or row.node in self.gone:
            if not renew:
                row.epoch += 1
                row.since = now
            row.node = node
            row.expires = now + lease
        return succeed(LeaseState(row.node, row.epoch, row.expires - now, row.since))


def lease(clock: Clock, store: FakeLeaseStore, node: str, seen: list[tuple[str, bool]] | None = None) -> LeaderLease:
    made = LeaderLease(clock, store, node, lease=5.0, renew_every=1.0)
    if seen is not None:
        made.listeners.append(lambda leading: seen.append((node, leading)))
    return made


def test_the_first_node_takes_the_lease_in_epoch_1_and_renews_it() -> None:
    clock = Clock()
    store = FakeLeaseStore(clock)
    seen: list[tuple[str, bool]] = []
    a = lease(clock, store, "a", seen)
    a.start()
    assert a.leading() and a.epoch == 1 and a.leader == "a"
    assert seen == [("a", True)]
    clock.pump([1.0] * 30)
    assert a.leading() and a.epoch == 1
    assert (a.counts.elections, a.counts.renewals, a.counts.lost) == (1, 30, 0)
    assert seen == [("a", True)]


def test_a_second_node_waits_while_the_lease_is_renewed() -> None:
    clock = Clock()
    store = FakeLeaseStore(clock)
    a, b = lease(clock, store, "a"), lease(clock, store, "b")
    a.start()
    b.start()
    clock.pump([1.0] * 20)
    assert a.leading() and not b.leading()
    assert b.leader == "a" and b.epoch == 1


def test_a_frozen_leader_stops_firing_at_its_deadline_before_another_takes_over() -> None:
    clock = Clock()
    store = FakeLeaseStore(clock)
    seen: list[tuple[str, bool]] = []
    a, b = lease(clock, store, "a", seen), lease(clock, store, "b", seen)
    a.start()
    clock.advance(0.5)
    b.start()
    # a's renewals stop being answered (SIGSTOP, a lost database): it was
    # last renewed at t=0 with 5 s left.
    store.stalled.add("a")
    clock.pump([0.25] * 19)  # t = 5.25: a past its deadline, b not yet in
    assert not a.leading()
    assert ("a", False) in seen
    assert b.leader != "b"
    clock.pump([0.25] * 4)  # t = 6.25: b's next step finds the lease expired
    assert b.leading() and b.epoch == 2
    # No moment where both led: a's loss comes before b's gain.
    assert seen == [("a", True), ("a", False), ("b", True)]
    assert a.counts.lost == 1 and b.counts.elections == 1


def test_a_leader_whose_session_is_gone_is_replaced_at_once_with_a_higher_epoch() -> None:
    clock = Clock()
    store = FakeLeaseStore(clock)
    a, b = lease(clock, store, "a"), lease(clock, store, "b")
    a.start()
    b.start()
    clock.pump([1.0] * 3)
    a.stop()  # the process is gone...
    store.gone.add("a")  # ...and with it its database session
    clock.advance(1.0)  # b's next step: well within a's lease
    assert b.leading() and b.epoch == 2
    assert store.row.expires - clock.seconds() == pytest.approx(5.0)


def test_a_leader_that_finds_another_holding_the_lease_stops_at_once() -> None:
    clock = Clock()
    store = FakeLeaseStore(clock)
    seen: list[tuple[str, bool]] = []
    a = lease(clock, store, "a", seen)
    a.start()
    # Another node took over (a's session was killed while a lived).
    store.row = Row("b", 2, clock.seconds() + 5, clock.seconds())
    clock.advance(1.0)
    assert not a.leading() and a.leader == "b" and a.epoch == 2
    assert seen == [("a", True), ("a", False)]


def test_an_unreachable_database_loses_the_lease_at_the_deadline_and_it_is_taken_again_in_a_new_epoch() -> None:
    clock = Clock()
    store = FakeLeaseStore(clock)
    seen: list[tuple[str, bool]] = []
    a = lease(clock, store, "a", seen)
    a.start()
    store.down = True
    clock.pump([1.0] * 4)
    assert a.leading()  # 4 s in: the lease had 5
    clock.pump([1.0] * 2)
    assert not a.leading() and a.counts.failures == 6
    store.down = False
    clock.pump([1.0] * 2)
    # The row still names a in epoch 1, but a no longer claims it: it takes
    # it anew, so whatever it wrote in epoch 1 is fenced off from epoch 2.
    assert a.leading() and a.epoch == 2
    assert seen == [("a", True), ("a", False), ("a", True)]


def test_an_answer_that_arrives_after_the_deadline_is_not_led_on() -> None:
    clock = Clock()
    store = FakeLeaseStore(clock)
    a = lease(clock, store, "a")
    a.start()
    store.stalled.add("a")
    clock.pump([1.0] * 7)
    assert not a.leading()
    late = store.pending[0]
    late.callback(LeaseState("a", 1, 5.0, 0.0))  # asked at t=1: 5 s left then, t=7 now
    assert not a.leading()


def test_steps_never_overlap() -> None:
    clock = Clock()
    store = FakeLeaseStore(clock)
    store.stalled.add("a")
    a = lease(clock, store, "a")
    a.start()
    clock.pump([1.0] * 5)
    assert len(store.pending) == 1


def test_the_lease_must_outlast_its_renewal_period() -> None:
    with pytest.raises(ValueError, match="longer than the renewal"):
        LeaderLease(Clock(), FakeLeaseStore(Clock()), "a", lease=1.0, renew_every=1.0)


def test_embedded_mode_always_leads_in_its_one_epoch() -> None:
    sole = SoleLeader("host:3000")
    seen: list[bool] = []
    sole.listeners.append(seen.append)
    assert sole.leading() and sole.leader == "host:3000" and sole.epoch == EMBEDDED_EPOCH == 1
    sole.start()
    sole.start()
    assert seen == [True]

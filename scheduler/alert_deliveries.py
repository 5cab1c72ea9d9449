"""A row of the alert outbox: one alert for one channel, and how its delivery went.

The outbox (``scheduler/alert_outbox.py``) keeps one per (key, channel) in
the job store; ``GET /api/tasks/{id}/alerts`` and ``GET /api/alerts`` show
them as the log of what was sent, when, and the receiver's reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

# pending: not delivered yet (due at next_attempt_at); sent: a receiver took
# it; failed: given up (a refusal, too many attempts, or no such channel).
DeliveryState = Literal["pending", "sent", "failed"]
DELIVERY_STATES: tuple[DeliveryState, ...] = get_args(DeliveryState)


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    key: str
    channel: str
    event: str
    created_at: float
    task_id: int | None = None
    job_id: int | None = None
    body: Mapping[str, Any] = field(default_factory=dict)
    state: DeliveryState = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_attempt_at: float | None = None
    # The receiver's status and the first bytes of its answer, or the error.
    reply: str | None = None
    sent_at: float | None = None

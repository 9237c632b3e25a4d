"""Stand-ins for the faust objects the input guard and the batched outputs read: an input
(``Ev``: its ``message`` with topic, partition and offset) and an app in a transaction (its id
and the assignor's topic groups, from which ``streams.input_guard.transactional_id`` is built:
``ps-0-<partition>`` for every topic here). No broker is involved."""

from __future__ import annotations

from dataclasses import dataclass, field

from faust.types import TP

TOPIC = "payment.requests"


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass(eq=False)  # compared by identity, as faust's events are
class Ev:
    message: Msg


def ev(partition: int, offset: int, topic: str = TOPIC) -> Ev:
    return Ev(Msg(topic, partition, offset))


class FakeAssignor:
    def group_for_topic(self, topic: str) -> int:
        return 0


@dataclass
class FakeConf:
    id: str = "ps"


@dataclass
class TxnApp:
    """An app in exactly_once (``in_transaction``) or at_least_once mode."""

    in_transaction: bool = True
    conf: FakeConf = field(default_factory=FakeConf)
    assignor: FakeAssignor = field(default_factory=FakeAssignor)

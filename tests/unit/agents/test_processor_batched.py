"""The payments processor on a batch's write buffer (``tables.batched.BatchWrites`` with objects)
decides and stores exactly what it does on a plain table.

The worker's processor keeps a batch's payment records as objects (copied in on save, copied out
on load) and encodes each once when the batch ends. Run the same inputs (new payments, the
gateway's answers, duplicates, declines, refunds, commands that queue behind a pending call)
through a processor on a plain dict and one on the buffer, flushing the buffer at batch
boundaries: every output and the final table must be the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

from agents.gateway import execute, reply_input
from agents.processor import PaymentProcessor, PaymentRecord, unseal_call
from bench.load import CommandFactory
from gateway_clients.simulated.client import InProcessSimulatedGateway
from gateway_clients.simulated.engine import SimulatedGatewayEngine
from paystream.core import commands as cmds
from paystream.security.crypto import KeyRing, is_envelope
from tables.batched import BatchWrites

NOW = 1_790_000_000_000


def unsealed(value: Any) -> Any:
    """Sealed tokens differ run to run (a random nonce per seal): compared as "sealed"."""
    if isinstance(value, str) and is_envelope(value):
        return "sealed"
    if isinstance(value, dict):
        return {k: unsealed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unsealed(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return unsealed({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return value


class RecordingTable(dict[str, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes += 1
        super().__setitem__(key, value)


def run(processor: PaymentProcessor, batches: list[BatchWrites], commands: list[cmds.Command],
        keyring: KeyRing, batch_size: int) -> list[Any]:
    gateways = {"simulated": InProcessSimulatedGateway(SimulatedGatewayEngine())}
    outputs: list[Any] = []

    async def go() -> None:
        for start in range(0, len(commands), batch_size):
            for n, command in enumerate(commands[start:start + batch_size]):
                now = NOW + start + n
                out = processor.handle_command(command, now, 0)
                outputs.append((out.events, out.calls, out.duplicate, out.queued))
                calls = list(out.calls)
                while calls:
                    call = calls.pop(0)
                    reply = await execute(gateways, call, 5.0, unseal=lambda c: unseal_call(keyring, c))
                    applied = processor.handle_input(call.payment_id, reply_input(reply), now, 0)
                    outputs.append((applied.events, applied.calls, applied.ignored))
                    calls.extend(applied.calls)
            for batch in batches:
                assert await batch.flush() == set()

    asyncio.run(go())
    return outputs


def test_a_batch_buffer_changes_nothing_but_the_number_of_table_writes() -> None:
    keyring = KeyRing(keys={"k": os.urandom(32)}, current="k")
    factory = CommandFactory()
    commands: list[cmds.Command] = []
    for i in range(40):
        create = cmds.from_avro(factory.create("batched", i))
        commands.append(create)
        if i % 5 == 0:
            commands.append(create)  # a duplicate, in the same batch
        if i % 7 == 0:
            body = create.body
            assert isinstance(body, cmds.CreatePayment)
            commands.append(cmds.Command(f"{create.command_id}-r", create.payment_id, NOW, "test",
                                         cmds.RefundPayment(refund_id=f"re-{i}", amount=max(1, body.amount // 2),
                                                            reason=None)))
    plain_table, buffered_table = RecordingTable(), RecordingTable()
    plain_ids, buffered_ids = RecordingTable(), RecordingTable()
    plain = PaymentProcessor(plain_table, plain_ids, sealer=keyring)
    batch = BatchWrites(None, buffered_table, encode=PaymentRecord.to_json)
    batch_ids = BatchWrites(None, buffered_ids)
    buffered = PaymentProcessor(batch, batch_ids, sealer=keyring)
    assert (unsealed(run(plain, [], commands, keyring, 16))
            == unsealed(run(buffered, [batch, batch_ids], commands, keyring, 16)))
    assert unsealed(dict(buffered_table)) == unsealed(dict(plain_table))
    assert dict(buffered_ids) == dict(plain_ids) and len(plain_ids) == len({c.command_id for c in commands})
    assert len(plain_table) == 40 and all(v["state"]["status"] in ("succeeded", "refunded", "partially_refunded")
                                          for v in plain_table.values())
    # one write per payment and batch instead of one per change
    assert buffered_table.writes < plain_table.writes

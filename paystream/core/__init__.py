"""Pure payment core: money, commands, events, the state machine, idempotency, card-data guard.

No I/O, no clock reads, no randomness, no faust/kafka imports.
"""

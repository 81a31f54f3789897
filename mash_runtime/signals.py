"""The runtime's Django signals (turn signals, the facts stored on each turn, are
`mash_runtime.memory.turn_signals`)."""

from django.dispatch import Signal

#: Sent with `send_robust(sender=Request, request=req)` by `mash_runtime.run.lifecycle.after_terminal`,
#: once per request that reached completed, failed or cancelled (again after a resume), after the
#: commit. A receiver runs in the engine's thread: it must be quick (hand work to a thread of its
#: own); an exception it raises is swallowed. `mash_telemetry.otel` connects here when export is on.
request_terminal = Signal()

__all__ = ["request_terminal"]

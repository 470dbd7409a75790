"""The ``nats`` backend: each channel is a NATS JetStream stream, for logs that must outlive one machine.

Optional: needs ``nats-py`` (``pip install wal[nats]``). Registered through the ``wal.backends`` entry point and on
import of this package. See ``docs/NATS.md`` for options, durability caveats and cluster use.
"""

from ...message import register_message_id_unmarshaler
from ...registry import register_builder, registered_names
from ._message_id import NatsMessageID as NatsMessageID
from ._opener import NatsOpener as NatsOpener
from ._opener import NatsOpenerBuilder as NatsOpenerBuilder
from ._options import NatsOptions as NatsOptions

__all__ = ["NatsMessageID", "NatsOpener", "NatsOpenerBuilder", "NatsOptions"]

if "nats" not in registered_names():
    register_builder(NatsOpenerBuilder())
    register_message_id_unmarshaler("nats", NatsMessageID.parse)

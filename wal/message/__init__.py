"""The message model: types, mutable and immutable messages, transactions, message IDs and their registry."""

from ._codec import decode_int as decode_int
from ._codec import encode_int as encode_int
from ._hybrid import add_physical_ms as add_physical_ms
from ._hybrid import compose_ts as compose_ts
from ._hybrid import logical as logical
from ._hybrid import physical_ms as physical_ms
from ._message import ImmutableMessage as ImmutableMessage
from ._message import ImmutableTxnMessage as ImmutableTxnMessage
from ._message import ImmutableTxnMessageBuilder as ImmutableTxnMessageBuilder
from ._message import MutableMessage as MutableMessage
from ._message import validate_properties as validate_properties
from ._message_id import IntMessageID as IntMessageID
from ._message_id import MessageID as MessageID
from ._message_id import register_message_id_unmarshaler as register_message_id_unmarshaler
from ._message_id import unmarshal_message_id as unmarshal_message_id
from ._txn import NON_TXN_ID as NON_TXN_ID
from ._txn import TxnContext as TxnContext
from ._txn import TxnState as TxnState
from ._types import SYSTEM_TYPES as SYSTEM_TYPES
from ._types import MessageType as MessageType

__all__ = [
    "NON_TXN_ID",
    "SYSTEM_TYPES",
    "ImmutableMessage",
    "ImmutableTxnMessage",
    "ImmutableTxnMessageBuilder",
    "IntMessageID",
    "MessageID",
    "MessageType",
    "MutableMessage",
    "TxnContext",
    "TxnState",
    "add_physical_ms",
    "compose_ts",
    "decode_int",
    "encode_int",
    "logical",
    "physical_ms",
    "register_message_id_unmarshaler",
    "unmarshal_message_id",
    "validate_properties",
]

"""A writer process for the CLI tests, driven line by line on stdin (not a test module).

    python _cli_child.py ROOT CHANNEL TERM

Prints ``ready`` once the channel is open for writing (it then holds the write lock). Commands on stdin:
``append N TAG`` appends N messages with payloads ``TAG-0`` ... and prints ``acked ID,ID,...``; ``txn N TAG`` does
the same inside one transaction and prints ``committed COMMIT_ID``. End of input closes the WAL and exits.
"""

from __future__ import annotations

import os
import sys

from wal import OpenOption, PChannelInfo, registry
from wal.message import MessageType, MutableMessage


def main(root: str, channel: str, term: int) -> None:
    opener = registry.must_get_builder("localfs").build(root=root, segment_bytes=4096, time_tick_interval=0.05)
    w = opener.open(OpenOption(channel=PChannelInfo(name=channel, term=term)))
    os.write(1, b"ready\n")
    for line in sys.stdin:
        parts = line.split()
        if parts and parts[0] == "append":
            n, tag = int(parts[1]), parts[2]
            ids = [w.append(MutableMessage(MessageType.INSERT, f"{tag}-{i}".encode(), {"tag": tag}, "v1")).message_id
                   for i in range(n)]
            os.write(1, ("acked " + ",".join(i.marshal() for i in ids) + "\n").encode())
        elif parts and parts[0] == "txn":
            n, tag = int(parts[1]), parts[2]
            txn = w.begin_txn(vchannel="v1")
            for i in range(n):
                txn.append(MutableMessage(MessageType.INSERT, f"{tag}-{i}".encode(), {"tag": tag}, "v1"))
            os.write(1, f"committed {txn.commit().message_id.marshal()}\n".encode())
    w.close()
    opener.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

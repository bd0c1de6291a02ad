"""Read the records of a wandb `.wandb` transaction log (what an offline run writes).

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB
blocks of chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle,
4 last) carrying serialized `wandb_internal_pb2.Record` protobufs. A block's tail shorter than a
chunk header is zero padding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Yield every record of a `.wandb` file in order."""
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path} is not a wandb transaction log (header {ident!r} {magic:#x})")
    offset, pending = FILE_HEADER.size, b""
    while offset + CHUNK_HEADER.size <= len(data):
        room = BLOCK_SIZE - offset % BLOCK_SIZE
        if room < CHUNK_HEADER.size:
            offset += room  # zero padding at the end of a block
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, offset)
        if kind == 0 and length == 0:
            break  # preallocated, unwritten space
        if offset + CHUNK_HEADER.size + length > len(data):
            break  # a chunk still being written
        chunk = data[offset + CHUNK_HEADER.size : offset + CHUNK_HEADER.size + length]
        offset += CHUNK_HEADER.size + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record

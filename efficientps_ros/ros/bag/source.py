"""Any bag as topics and messages: rosbag2 (MCAP or sqlite3, with metadata.yaml) or ROS 1.

Messages come out in bag-time order as CDR bytes, ROS 1 ones converted by
rosbags' own byte-level converter, so that they can be published as they are.
Every failure is a BagError whose message names the bag, and the topic and
position where it happened.

Compressed data never expands beyond the size it declares, nor beyond
MAX_UNPACKED_BYTES: rosbags expands a chunk or message whole before it
compares the result with the size declared, so a few kilobytes crafted to
expand to gigabytes would take that much memory (or, for a rosbag2 compressed
file by file, that much disk) first.
"""
from __future__ import annotations

import bz2
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import lz4.frame
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection, QosDurability
from rosbags.rosbag1 import reader as rosbag1_reader
from rosbags.rosbag2 import storage_mcap

from ...model.config import parse_document, read_text_file
from .message_types import ros2_typestore

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

# The most bytes one compressed chunk or message may expand to. Recorders
# write chunks of about a megabyte, or one message where that is larger; the
# largest image the node takes (max_image_pixels, 8192x4096, at 8 bytes a
# pixel) is 256 MiB.
MAX_UNPACKED_BYTES = 512 * 2**20
# The largest metadata.yaml read. rosbag2 writes a few hundred bytes per topic
# and per file: a bag of thousands of each stays under a few megabytes.
MAX_METADATA_BYTES = 16 * 2**20


class BagError(ValueError):
    """A bag that cannot be read (on); the message names the bag, topic and position."""


class CorruptMessage(BagError):
    """One message that cannot be decoded; the messages after it may be fine."""


class _TooLarge(Exception):
    """Compressed data that would expand beyond what it declares or MAX_UNPACKED_BYTES."""


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    timestamp: int  # bag time, ns
    index: int  # this message's position on its topic, from 0
    # As stored: CDR in rosbag2 (zstd-compressed in a bag compressed message by message),
    # ROS 1 serialization in a .bag.
    raw: bytes | memoryview


def bag_path(path: str | Path) -> Path:
    """A rosbag2 folder, also when given the storage file inside it; a .bag file as it is."""
    path = Path(path)
    if path.is_file() and path.suffix != ".bag" and (path.parent / "metadata.yaml").exists():
        return path.parent
    return path


class BagSource:
    """One open bag; use it as a context manager."""

    def __init__(self, path: str | Path):
        self.path = bag_path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path}: no such file or folder")
        _check_metadata(self.path)
        _check_compression(self.path)
        try:
            self._reader = _open(self.path)
        except _TooLarge as exc:
            raise BagError(f"bag {self.path}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - rosbags, sqlite3 and mcap raise many types for broken files
            raise BagError(f"bag {self.path}: cannot be opened{_files(self.path)}, truncated or damaged? "
                           f"({_describe(exc)})") from None
        self._packed_messages = _unpack_messages_here(self._reader)
        self.is_ros1 = not self._reader.is2
        self.topics: dict[str, str] = {topic: info.msgtype for topic, info in self._reader.topics.items()}
        self.counts: dict[str, int] = {topic: info.msgcount for topic, info in self._reader.topics.items()}
        self.start_time: int = self._reader.start_time if self._reader.message_count else 0
        self.end_time: int = self._reader.end_time if self._reader.message_count else 0
        # Topic -> why none of the messages its metadata.yaml lists can be read.
        self.unreadable: dict[str, str] = _unreadable_topics(self._reader)
        self._converters_ready = False

    def __enter__(self) -> "BagSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.stack is not None:
            self._reader.close()

    def latched(self, topic: str) -> bool:
        """Whether the topic was published latched: transient local in rosbag2, latching in ROS 1."""
        connections = [c for c in self._reader.connections if c.topic == topic]
        if self.is_ros1:
            return bool(connections) and all(c.ext.latching for c in connections)
        profiles = [q for c in connections for q in c.ext.offered_qos_profiles]
        return bool(profiles) and all(q.durability == QosDurability.TRANSIENT_LOCAL for q in profiles)

    def where(self, topic: str, index: int, timestamp: int) -> str:
        """'bag B, topic T, message N at S s': the position errors name."""
        seconds = (timestamp - self.start_time) / 1e9
        return f"bag {self.path}, topic {topic}, message {index} at {seconds:.3f} s"

    def messages(self, topics: set[str] | None = None, start: int | None = None,
                 stop: int | None = None) -> Iterator[BagMessage]:
        """Messages of `topics` (all when None) with start <= bag time < stop, in time order.

        A file that ends or breaks mid-way raises BagError naming the last
        message read, after every message before it was yielded.
        """
        connections = [c for c in self._reader.connections if topics is None or c.topic in topics]
        if not connections:
            return
        counters: dict[str, int] = {}
        stream = self._reader.messages(connections, start=start, stop=stop)
        last = None
        while True:
            try:
                connection, timestamp, raw = next(stream)
            except StopIteration:
                return
            except _TooLarge as exc:
                after = f"after {self.where(*last)}" if last else f"bag {self.path}, before its first message"
                raise BagError(f"{after}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - truncated files raise from deep in the storage readers
                after = f"after {self.where(*last)}" if last else f"bag {self.path}, before its first message"
                raise BagError(f"{after}: the bag is truncated or damaged ({_describe(exc)})") from None
            index = counters.get(connection.topic, 0)
            counters[connection.topic] = index + 1
            last = (connection.topic, index, timestamp)
            yield BagMessage(connection.topic, connection.msgtype, timestamp, index, raw)

    def cdr(self, message: BagMessage) -> bytes:
        """The message as CDR bytes; CorruptMessage where a ROS 1 message does not convert,
        or a compressed one does not expand within MAX_UNPACKED_BYTES."""
        if self._packed_messages:
            return self._expand(message)
        if not self.is_ros1:
            # rosbag2 storages give bytes, which rclpy takes as they are: no copy.
            return message.raw if isinstance(message.raw, bytes) else bytes(message.raw)
        self._prepare_converters()
        try:
            return bytes(ros2_typestore().ros1_to_cdr(message.raw, message.msgtype))
        except Exception as exc:  # noqa: BLE001 - rosbags raises SerdeError, struct and key errors
            raise CorruptMessage(f"{self._where(message)}: corrupt message ({_describe(exc)})") from None

    def decode(self, message: BagMessage, message_class: type):
        """The message as an rclpy object; CorruptMessage where its bytes do not decode."""
        data = self.cdr(message)
        try:
            return deserialize_message(data, message_class)
        except Exception as exc:  # noqa: BLE001 - rclpy raises RMWError and others
            raise CorruptMessage(f"{self._where(message)}: corrupt message ({_describe(exc)})") from None

    def _expand(self, message: BagMessage) -> bytes:
        """A message of a bag compressed message by message, expanded within MAX_UNPACKED_BYTES."""
        try:
            expanded = _measured(zstd.ZstdDecompressor, message.raw, MAX_UNPACKED_BYTES)
        except Exception as exc:  # noqa: BLE001 - ZstdError, and ValueError for data that ends mid-frame
            raise CorruptMessage(f"{self._where(message)}: corrupt message ({_describe(exc)})") from None
        if expanded is None:
            raise CorruptMessage(f"{self._where(message)}: corrupt message (its zstd data expands beyond "
                                 f"{MAX_UNPACKED_BYTES} bytes, the most a message may take here)")
        return expanded

    def _where(self, message: BagMessage) -> str:
        return self.where(message.topic, message.index, message.timestamp)

    def _prepare_converters(self) -> None:
        """ROS 1 types the ROS 2 store lacks are converted with the bag's own definitions.

        The ROS 2 store's converter drops the ROS 1 header's seq field, so
        types it has are converted with its definitions.
        """
        if self._converters_ready:
            return
        store = ros2_typestore()
        missing = {name: fields for name, fields in self._reader.typestore.fielddefs.items()
                   if name not in store.fielddefs}
        if missing:
            store.register(missing)
        self._converters_ready = True


def _check_metadata(path: Path) -> None:
    """A folder without metadata.yaml: name what is missing, and what still opens."""
    if not path.is_dir() or (path / "metadata.yaml").exists():
        return
    mcap = sorted(path.glob("*.mcap"))
    if not mcap and not any(path.glob("*.db3")):
        raise BagError(f"bag {path}: a folder with no metadata.yaml and no .mcap or .db3 file, so no rosbag2 bag")
    hint = f"; an .mcap file opens on its own: bag {mcap[0]}" if mcap else ""
    raise BagError(f"bag {path}: a rosbag2 folder, but its metadata.yaml is missing{hint}")


def _files(path: Path) -> str:
    """' (x.mcap: 1234 bytes)': the storage files, whose size shows a truncation."""
    files = [f for f in sorted(path.iterdir()) if f.name != "metadata.yaml"] if path.is_dir() else [path]
    return " (" + ", ".join(f"{f.name}: {f.stat().st_size} bytes" for f in files) + ")" if files else ""


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_compression(path: Path) -> None:
    """Refuse a rosbag2 compressed file by file.

    rosbags expands each of its files whole into a temporary folder before it
    reads a message: as much disk as the files expand to, however small they are.
    """
    if not path.is_dir():
        return
    metadata = _metadata(path)
    try:
        mode = str(metadata["rosbag2_bagfile_information"].get("compression_mode") or "").lower()
    except Exception:  # noqa: BLE001 - a metadata.yaml of another structure is for rosbags to describe
        return
    if mode == "file":
        raise BagError(f"bag {path}: compressed file by file (compression_mode: file), which is not read here; "
                       f"decompress it into a new bag first: rosbags-convert --src {path} --dst NEW_BAG")


def _metadata(path: Path):
    """A rosbag2 folder's metadata.yaml as plain data, its size and form checked before rosbags reads it.

    rosbags reads it whole and with aliases: a sparse file of gigabytes, or a
    kilobyte of aliases of aliases, would take the memory or the time first.
    """
    where = f"bag {path}: metadata.yaml"
    try:
        return parse_document(read_text_file(path / "metadata.yaml", MAX_METADATA_BYTES, where), where, "yaml",
                              max_chars=MAX_METADATA_BYTES)
    except ValueError as exc:
        raise BagError(str(exc)) from None


def _storages(reader: AnyReader) -> Iterator:
    """The storage readers of an open rosbag2: one per file of a folder, or the file given."""
    for bag in reader.readers if reader.is2 else ():
        yield from getattr(bag.storage, "storages", [bag.storage])


def _open(path: Path) -> AnyReader:
    """The bag opened with rosbags, its chunks' declared sizes checked and bounded."""
    reader = AnyReader([path])
    reader.open()
    try:
        _check_mcap_chunks(reader)
        _bound_ros1_chunks(reader)
    except BaseException:
        reader.close()
        raise
    return reader


def _check_mcap_chunks(reader: AnyReader) -> None:
    """Refuse an MCAP file whose index declares a chunk beyond MAX_UNPACKED_BYTES, before any is read.

    The chunks it reads are bounded by their declared sizes (see _bound_mcap_decompression).
    """
    for storage in _storages(reader):
        for chunk in storage.chunks if isinstance(storage, storage_mcap.McapReader) else ():
            if chunk.uncompressed_size > MAX_UNPACKED_BYTES:
                raise _TooLarge(f"{Path(storage.path).name}: {_declares(chunk.uncompressed_size)}")


def _bound_ros1_chunks(reader: AnyReader) -> None:
    """Have rosbags expand each chunk of a ROS 1 bag within the size its header declares.

    rosbags keeps of a chunk's header only its compression, not the size it
    declares uncompressed: that is read from the header again, as cheaply as
    rosbags read it at open.
    """
    expanders = {name: _chunk_expander(name, make) for name, make in _ROS1_DECOMPRESSORS.items()}
    for bag in reader.readers if not reader.is2 else ():
        for position, chunk in bag.chunks.items():
            bag.bio.seek(position)
            header = rosbag1_reader.Header.read(bag.bio, rosbag1_reader.RecordType.CHUNK)
            compression = header.get_string("compression")
            if compression in expanders:
                size = header.get_uint32("size")
                if size > MAX_UNPACKED_BYTES:
                    raise _TooLarge(_declares(size))
                bag.chunks[position] = chunk._replace(decompressor=partial(expanders[compression], size=size))


def _declares(size: int) -> str:
    return (f"a chunk declares {size} bytes uncompressed, more than the {MAX_UNPACKED_BYTES} a chunk may take "
            "here (damaged or crafted?)")


def _unpack_messages_here(reader: AnyReader) -> bool:
    """Take the expanding of a rosbag2 compressed message by message over from rosbags, to bound it.

    rosbags expands each message whole; told that the bag is not compressed,
    it gives the stored bytes instead, which cdr() expands.
    """
    packed = False
    for bag in reader.readers if reader.is2 else ():
        if bag.storage.metadata.compression_mode == "message":
            bag.storage.metadata = bag.storage.metadata._replace(compression_mode=None)
            packed = True
    return packed


def _unreadable_topics(reader: AnyReader) -> dict[str, str]:
    """Topics of a metadata.yaml that no connection of the storage files matches, and why.

    rosbags reads a topic from the storage connections whose type,
    serialization, offered QoS and type hash are the metadata's, and passes
    over the others without a word: a metadata.yaml edited by hand, or taken
    from another recording, leaves such a topic reading as empty.
    """
    unreadable = {}
    for bag in reader.readers if reader.is2 else ():
        if not hasattr(bag.storage, "storages"):
            continue  # a storage file on its own: its topics are its connections
        stored = [c for storage in bag.storage.storages for c in storage.connections]
        for listed in bag.connections:
            if listed.msgcount and not any(_same_connection(listed, c) for c in stored):
                unreadable[listed.topic] = (
                    f"metadata.yaml lists {listed.msgcount} messages, none of which can be read: "
                    f"{_difference(listed, stored)}; `ros2 bag reindex` writes metadata.yaml anew from the storage")
    return unreadable


def _same_connection(listed: Connection, stored: Connection) -> bool:
    """Whether rosbags reads the messages of storage connection `stored` for metadata connection `listed`."""
    return (stored.topic == listed.topic and stored.msgtype == listed.msgtype and stored.ext == listed.ext
            and (not stored.digest or not listed.digest or stored.digest == listed.digest))


def _difference(listed: Connection, stored: list[Connection]) -> str:
    same_topic = [c for c in stored if c.topic == listed.topic]
    if not same_topic:
        return "the storage holds no such topic"
    other = same_topic[0]
    if other.msgtype != listed.msgtype:
        return f"its type is {listed.msgtype} in metadata.yaml, {other.msgtype} in the storage"
    if other.ext.serialization_format != listed.ext.serialization_format:
        return (f"its serialization is {listed.ext.serialization_format} in metadata.yaml, "
                f"{other.ext.serialization_format} in the storage")
    for mine, theirs in zip(listed.ext.offered_qos_profiles, other.ext.offered_qos_profiles):
        for field in mine._fields:
            if getattr(mine, field) != getattr(theirs, field):
                return (f"its offered QoS {field} is {_qos_value(getattr(mine, field))} in metadata.yaml, "
                        f"{_qos_value(getattr(theirs, field))} in the storage")
    if len(listed.ext.offered_qos_profiles) != len(other.ext.offered_qos_profiles):
        return (f"it has {len(listed.ext.offered_qos_profiles)} offered QoS profiles in metadata.yaml, "
                f"{len(other.ext.offered_qos_profiles)} in the storage")
    return f"its type hash is {listed.digest} in metadata.yaml, {other.digest} in the storage"


def _qos_value(value) -> str:
    return value.name.lower() if hasattr(value, "name") else str(value)


def _bounded(make: Callable, data: bytes, limit: int) -> bytes | None:
    """`data`, one compressed frame or several, expanded; None where that would take more than `limit` bytes.

    `make` gives a decompressor of the format (zstd, lz4 or bz2), which stops
    at the length asked for: no more than limit + 1 bytes are made.
    """
    parts, left = [], limit
    while data:
        decompressor = make()
        part = decompressor.decompress(data, max_length=left + 1)
        if len(part) > left:
            return None
        if not decompressor.eof:
            raise ValueError("the compressed data ends before its end-of-stream marker")
        parts.append(part)
        left -= len(part)
        data = decompressor.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)


# What _measured expands at a time, and then drops, while it counts.
PIECE_BYTES = 2**20


def _measured(make: Callable, data: bytes, limit: int) -> bytes | None:
    """Like _bounded, for data that declares no size: counted piece by piece first, so that
    data expanding beyond `limit` is refused having taken no more memory than a piece."""
    total = 0
    remaining = data
    while remaining:
        decompressor = make()
        total += len(decompressor.decompress(remaining, max_length=PIECE_BYTES))
        while not decompressor.eof and total <= limit:
            if decompressor.needs_input:
                raise ValueError("the compressed data ends before its end-of-stream marker")
            total += len(decompressor.decompress(b"", max_length=PIECE_BYTES))
        if total > limit:
            return None
        remaining = decompressor.unused_data
    return _bounded(make, data, total)


def _chunk_expander(name: str, make: Callable) -> Callable[[bytes, int], bytes]:
    """A chunk decompressor called with the chunk's data and the size it declares uncompressed."""
    def expand(data: bytes, size: int) -> bytes:
        if size > MAX_UNPACKED_BYTES:
            raise _TooLarge(_declares(size))
        expanded = _bounded(make, data, size)
        if expanded is None:
            raise _TooLarge(f"a chunk compressed with {name} expands beyond the {size} bytes it declares "
                            "(damaged or crafted?)")
        return expanded

    return expand


_ROS1_DECOMPRESSORS = {"bz2": bz2.BZ2Decompressor, "lz4": lz4.frame.LZ4FrameDecompressor}


def _bound_mcap_decompression() -> None:
    """Have rosbags expand MCAP chunks within their declared sizes.

    Its table of MCAP decompressors, called with a chunk's data and declared
    size, is the one place every chunk passes through: at open (files without
    an index) as while reading messages.
    """
    for name, make in (("zstd", zstd.ZstdDecompressor), ("lz4", lz4.frame.LZ4FrameDecompressor)):
        storage_mcap.DECOMPRESSORS[name] = _chunk_expander(name, make)


_bound_mcap_decompression()

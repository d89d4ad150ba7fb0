"""Any bag as topics and messages: rosbag2 (MCAP or sqlite3, with metadata.yaml) or ROS 1.

Messages come out in bag-time order as CDR bytes, ROS 1 ones converted by
rosbags' own byte-level converter, so that they can be published as they are.
Every failure is a BagError whose message names the bag, and the topic and
position where it happened.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosDurability

from .message_types import ros2_typestore


class BagError(ValueError):
    """A bag that cannot be read (on); the message names the bag, topic and position."""


class CorruptMessage(BagError):
    """One message that cannot be decoded; the messages after it may be fine."""


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    timestamp: int  # bag time, ns
    index: int  # this message's position on its topic, from 0
    raw: bytes | memoryview  # as stored: CDR in rosbag2, ROS 1 serialization in a .bag


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
        try:
            self._reader = AnyReader([self.path])
            self._reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags, sqlite3 and mcap raise many types for broken files
            raise BagError(f"bag {self.path}: cannot be opened{_files(self.path)}, truncated or damaged? "
                           f"({_describe(exc)})") from None
        self.is_ros1 = not self._reader.is2
        self.topics: dict[str, str] = {topic: info.msgtype for topic, info in self._reader.topics.items()}
        self.counts: dict[str, int] = {topic: info.msgcount for topic, info in self._reader.topics.items()}
        self.start_time: int = self._reader.start_time if self._reader.message_count else 0
        self.end_time: int = self._reader.end_time if self._reader.message_count else 0
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
            except Exception as exc:  # noqa: BLE001 - truncated files raise from deep in the storage readers
                after = f"after {self.where(*last)}" if last else f"bag {self.path}, before its first message"
                raise BagError(f"{after}: the bag is truncated or damaged ({_describe(exc)})") from None
            index = counters.get(connection.topic, 0)
            counters[connection.topic] = index + 1
            last = (connection.topic, index, timestamp)
            yield BagMessage(connection.topic, connection.msgtype, timestamp, index, raw)

    def cdr(self, message: BagMessage) -> bytes:
        """The message as CDR bytes; CorruptMessage where a ROS 1 message does not convert."""
        if not self.is_ros1:
            return bytes(message.raw)
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

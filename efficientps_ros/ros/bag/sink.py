"""A rosbag2 being written: topics added as they come, always closed readable.

Closing writes metadata.yaml, without which rosbag2 readers refuse the bag;
use the sink as a context manager so that an error, or SIGINT, still closes it.
A folder that cannot be made, or a disk that fills up, is a BagError naming the bag.
"""
from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer

from .message_types import definition
from .source import BagError

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_DEFAULT_TIME = QosTime(0, 0)


def check_new_folder(path: str | Path) -> None:
    """Refuse a bag folder that exists already or cannot be made, and leave nothing behind.

    Making the folder (and the missing ones above it) and removing it again is
    the one test every file system answers truly: read-only mounts, /proc,
    permissions, a file where a folder should be.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise BagError(f"bag {path}: exists already; give a new folder")
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    above = next((folder for folder in path.parents if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise BagError(f"bag {path}: cannot be made: {above} is a file, not a folder")
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise BagError(f"bag {path}: cannot be made ({exc.strerror or exc})") from None
    finally:
        for folder in missing:
            with suppress(OSError):
                folder.rmdir()


def offered_qos(reliable: bool = True, latched: bool = False) -> Qos:
    """The publisher QoS a bag stores for a topic, so that players publish it alike (latched: transient local)."""
    return Qos(
        QosHistory.KEEP_LAST, 1,
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
        _DEFAULT_TIME, _DEFAULT_TIME, QosLiveliness.AUTOMATIC, _DEFAULT_TIME, False,
    )


class BagSink:
    """Writes serialized (CDR) messages to a new rosbag2 folder."""

    def __init__(self, path: str | Path, storage: str = "mcap"):
        self.path = Path(path)
        if storage not in STORAGES:
            raise BagError(f"bag {self.path}: unknown storage {storage!r}; allowed: {', '.join(STORAGES)}")
        check_new_folder(self.path)
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
        try:
            self._writer.open()
        except OSError as exc:
            raise BagError(f"bag {self.path}: cannot be made ({exc.strerror or exc})") from None
        self._connections = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "BagSink":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def add_topic(self, topic: str, msgtype: str, qos: Qos | None = None) -> None:
        """Add a topic once; `qos` is what its publishers offered (default: reliable, volatile)."""
        if topic in self._connections:
            return
        try:
            msgdef, digest = definition(msgtype)
        except KeyError as exc:
            raise BagError(f"bag {self.path}, topic {topic}: cannot record type {msgtype}: {exc.args[0]}") from None
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, msgdef=msgdef, rihs01=digest, offered_qos_profiles=[qos or offered_qos()])
        self.counts[topic] = 0

    def write(self, topic: str, timestamp: int, data: bytes) -> None:
        """Write one message of a topic added before, at `timestamp` ns."""
        try:
            self._writer.write(self._connections[topic], timestamp, data)
        except OSError as exc:
            raise BagError(f"bag {self.path}, topic {topic}: cannot be written ({exc.strerror or exc})") from None
        self.counts[topic] += 1

    def close(self) -> None:
        if self._writer.storage is not None:
            try:
                self._writer.close()
            except OSError as exc:
                raise BagError(f"bag {self.path}: cannot be closed ({exc.strerror or exc})") from None

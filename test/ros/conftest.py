"""Fixtures for tests that start real ROS 2 processes.

Every ROS process of a test runs as a child process of pytest, as users run
nodes. `make test` runs pytest inside a private network namespace with only
loopback, so DDS traffic between the children never leaves the machine.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest

from efficientps_ros.ros.middleware import FASTDDS_BUILTIN_TRANSPORTS

REPO_ROOT = Path(__file__).resolve().parents[2]
# The tests' own participants, created in this process, must match their children's.
os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = FASTDDS_BUILTIN_TRANSPORTS
# Children inherit an ignored SIGINT (pytest run as a script's background job),
# and the tests stop them with SIGINT as Ctrl-C would: give them the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _only_loopback() -> bool:
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def _prepend_path(path: str, existing: Optional[str]) -> str:
    parts = [p for p in (existing or "").split(os.pathsep) if p and p != path]
    return os.pathsep.join([path, *parts])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll `predicate` until it gives a true value or `timeout` s pass; its last value."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


def error_lines(text: str) -> list[str]:
    """The lines of a process's output that report an error."""
    return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]


@pytest.fixture(scope="session")
def ros_env() -> dict[str, str]:
    """Environment for child ROS processes: a fresh dict, safe to extend per test.

    - FASTDDS_BUILTIN_TRANSPORTS as `efficientps_ros.ros.middleware` sets it
      (LARGE_DATA, with time for TCP negotiation): megabyte images need it, and a
      process with it does not talk to one without it.
    - PYTHONPATH starts with the repository root, so children import this
      checkout of `efficientps_ros`.
    - AMENT_PREFIX_PATH starts with this interpreter's prefix (the venv), which
      the pip wheels do not set and ament_index lookups need.
    - PYTHONUNBUFFERED=1, so a child's output is complete even when it is killed.
    - PYTHONFAULTHANDLER=1, so a child that hangs and is aborted shows its threads' stacks.
    - Outside a network namespace that has only loopback, DDS discovery is
      limited to localhost (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST).
    """
    env = dict(os.environ)
    env["FASTDDS_BUILTIN_TRANSPORTS"] = FASTDDS_BUILTIN_TRANSPORTS
    env["PYTHONPATH"] = _prepend_path(str(REPO_ROOT), env.get("PYTHONPATH"))
    env["AMENT_PREFIX_PATH"] = _prepend_path(sys.prefix, env.get("AMENT_PREFIX_PATH"))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    if not _only_loopback():
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return env


class ChildProcess:
    """A Python child process whose stdout and stderr go to files.

    Files rather than pipes, so a chatty child never blocks on a full pipe
    while the test is busy elsewhere.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_dir: Path, name: str):
        self.name = name
        self._stdout_path = log_dir / f"{name}.stdout"
        self._stderr_path = log_dir / f"{name}.stderr"
        with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
            # A session of its own, so the whole group can be stopped at once.
            self.popen = subprocess.Popen(
                list(argv), env=env, cwd=REPO_ROOT, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    @property
    def stdout(self) -> str:
        return self._stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Wait for the child to exit; on timeout kill it and fail the test with its output."""
        try:
            returncode = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.abort()
            pytest.fail(f"{self.name} did not finish within {timeout} s\n{self.describe()}")
        return subprocess.CompletedProcess(self.popen.args, returncode, self.stdout, self.stderr)

    def stop(self, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """Ask the child to stop with SIGINT (as Ctrl-C would), kill it if it lingers."""
        if self.popen.poll() is None:
            self.interrupt()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.abort()
        return subprocess.CompletedProcess(self.popen.args, self.popen.returncode, self.stdout, self.stderr)

    def interrupt(self) -> None:
        """SIGINT to the child's process group, as Ctrl-C would send; returns at once."""
        self._signal(signal.SIGINT)

    def abort(self) -> None:
        """SIGABRT, so that the child prints where each of its threads is stuck, then kill it."""
        self._signal(signal.SIGABRT)
        try:
            self.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        """Kill the child's process group now; harmless if it already exited."""
        self._signal(signal.SIGKILL)
        self.popen.wait()

    def describe(self) -> str:
        """The child's exit status and output, for failure messages."""
        return (f"--- {self.name}: exit status {self.popen.poll()}\n"
                f"--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}")

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass


class RosProcesses:
    """Starts Python children with the ROS environment; all are killed at teardown."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self._env = env
        self._log_dir = log_dir
        self._children: list[ChildProcess] = []

    def start(
        self,
        code: Optional[str] = None,
        *,
        module: Optional[str] = None,
        args: Sequence[str] = (),
        env: Optional[dict[str, str]] = None,
        name: Optional[str] = None,
    ) -> ChildProcess:
        """Start `python -c code` or `python -m module` with `args`, in the background.

        `env` entries are added to the ROS environment. `name` labels the output
        files and failure messages.
        """
        if (code is None) == (module is None):
            raise ValueError("give exactly one of code or module")
        argv = [sys.executable, *(("-c", code) if code is not None else ("-m", module)), *args]
        name = name or (module or "snippet") + f"-{len(self._children)}"
        child = ChildProcess(argv, {**self._env, **(env or {})}, self._log_dir, name)
        self._children.append(child)
        return child

    def run(self, code: Optional[str] = None, *, timeout: float = 60.0, check: bool = True,
            **kwargs) -> subprocess.CompletedProcess:
        """Start a child and wait for it; with `check`, a non-zero exit fails the test."""
        child = self.start(code, **kwargs)
        result = child.wait(timeout)
        if check and result.returncode != 0:
            pytest.fail(f"{child.name} failed\n{child.describe()}")
        return result

    def stop_all(self, timeout: float = 3.0) -> None:
        """SIGINT every child still running, then kill what is left after `timeout` s.

        A child that exits on SIGINT closes its Fast DDS shared-memory ports
        itself; a killed one leaves them behind (see `remove_stale_shared_memory`).
        """
        running = [child for child in self._children if child.popen.poll() is None]
        for child in running:
            child.interrupt()
        end = time.monotonic() + timeout
        for child in running:
            try:
                child.popen.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for child in self._children:
            child.kill()


SHARED_MEMORY = Path("/dev/shm")


def _is_locked(path: Path) -> bool:
    try:
        with open(path, "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    return False


def remove_stale_shared_memory(directory: Path = SHARED_MEMORY) -> list[str]:
    """Remove the Fast DDS shared-memory segments and ports of processes that are gone.

    Fast DDS keeps an `_el` (or `_sl`) lock file beside each segment and port,
    locked while its owner lives. A participant that reuses the port of a
    killed one can hang at start or never receive data (Fast-DDS issues
    5053 and 5469), so a long run must not pile them up. The files of live
    owners are kept. Returns the names removed.
    """
    removed = []
    for lock in sorted(directory.glob("fastdds_*_[es]l")):
        if _is_locked(lock):
            continue
        stem = lock.name[:-3]
        for name in (stem, lock.name, f"sem.{stem}_mutex"):
            try:
                (directory / name).unlink()
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


@pytest.fixture
def ros_processes(ros_env: dict[str, str], tmp_path: Path) -> Iterator[RosProcesses]:
    """Start Python child processes that use ROS; every one is stopped when the test ends.

    `ros_processes.start(code or module=..., args=..., env=...)` returns a
    running `ChildProcess` (`wait(timeout)`, `stop()`, `kill()`, `stdout`,
    `stderr`, `describe()`); `ros_processes.run(...)` starts one and waits
    for it (default 60 s), failing the test with the child's output on a
    timeout or, unless `check=False`, a non-zero exit. Output files lie in
    the test's `tmp_path`. At the end the children get SIGINT, then SIGKILL,
    and the shared memory the killed ones left is removed.
    """
    processes = RosProcesses(ros_env, tmp_path)
    yield processes
    processes.stop_all()
    remove_stale_shared_memory()

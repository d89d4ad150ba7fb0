"""glibc's free-memory thresholds: fixed by the node, unless the user set them."""
import platform

import pytest

from efficientps_ros.ros.memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_thresholds_are_fixed_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert keep_freed_memory()


@pytest.mark.parametrize("variable", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"])
def test_thresholds_the_user_chose_are_left_alone(monkeypatch, variable):
    monkeypatch.setenv(variable, "1048576")
    assert not keep_freed_memory()

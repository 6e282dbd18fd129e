"""A file a living process rewrites every few seconds, and how another process tells from it, on any host
that shares the filesystem, whether that process still lives.

The writer (:class:`Heartbeat`) replaces the file atomically with its content and a beat count every
``interval`` seconds. The watcher (:class:`HeartbeatWatch`) judges by its own clock only: the content must
change within ``stale_after`` seconds of the watcher's monotonic time. Neither the hosts' clocks nor the
file server's timestamps enter, so a login node and a compute node need not agree on the time; a file read
by a fresh ``open`` is current on NFS (close-to-open consistency).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

INTERVAL_S = 20.0
# Six beats missed: a busy file server or a stalled writer is not taken for a dead one.
STALE_AFTER_S = 6 * INTERVAL_S


def read(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The content of a heartbeat file, or None when it is missing or unreadable."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def write(path: str | os.PathLike[str], content: Mapping[str, Any], exclusive: bool = False) -> bool:
    """Write ``content`` to ``path`` whole (never a half-written file); with ``exclusive`` only where no
    file is there yet (False when one is)."""
    path = Path(path)
    temporary = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}")
    temporary.write_text(json.dumps(dict(content), sort_keys=True))
    try:
        if not exclusive:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)  # atomic, and fails where the file exists (also on NFS)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


class Heartbeat:
    """Rewrites ``path`` with ``content`` and a growing ``beat`` every ``interval`` seconds, from a daemon
    thread, while ``still_mine(current content)`` holds (a file another process took over is left alone)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        content: Mapping[str, Any],
        interval: float = INTERVAL_S,
        still_mine: Callable[[dict[str, Any] | None], bool] = lambda current: True,
    ):
        self.path, self.content, self.interval, self.still_mine = Path(path), dict(content), interval, still_mine
        self.beat = int(content.get("beat", 0))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, write_now: bool = True) -> "Heartbeat":
        if write_now:
            write(self.path, {**self.content, "beat": self.beat})
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.still_mine(read(self.path)):
                log.warning("%s is no longer this process's: stopped rewriting it", self.path)
                return
            self.beat += 1
            try:
                write(self.path, {**self.content, "beat": self.beat})
            except OSError as exc:  # a full or unreachable disk: the watchers will judge by the missed beats
                log.warning("could not rewrite %s (%s)", self.path, exc)

    def stop(self, remove: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if remove and self.still_mine(read(self.path)):
            self.path.unlink(missing_ok=True)


class HeartbeatWatch:
    """Whether the writer of a heartbeat file lives, from successive looks at it (see the module)."""

    def __init__(
        self, path: str | os.PathLike[str], stale_after: float = STALE_AFTER_S, clock: Callable[[], float] = time.monotonic
    ):
        self.path, self.stale_after, self.clock = Path(path), stale_after, clock
        self._last: dict[str, Any] | None = None
        self._since = 0.0

    def look(self) -> bool | None:
        """True: it beat within ``stale_after`` (or is seen for the first time); False: it stopped beating,
        or its file went away after it was seen; None: its file was never seen."""
        content, now = read(self.path), self.clock()
        if content is None:
            return None if self._last is None else False
        if content != self._last:
            self._last, self._since = content, now
            return True
        return now - self._since <= self.stale_after

    def wait_for_beat(self, poll: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Watch until the file changes (True: its writer lives) or ``stale_after`` passes without a change
        or it goes away (False)."""
        if not self.look():
            return False
        seen = self._last
        while True:
            sleep(poll)
            alive = self.look()
            if not alive:
                return False
            if self._last != seen:
                return True

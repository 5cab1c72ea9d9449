"""A small file replaced whole and atomically: a crash leaves the old one or the new one.

The new content goes to a temp file in the same folder, is synced, renamed
over the old file, and the folder is synced, so neither a crash nor a power
cut can leave half a file.  tasks.db (``scheduler.task_store``) and the
maintenance switch (``scheduler.maintenance``) are written this way.
"""

from __future__ import annotations

import glob
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from twisted.logger import Logger

log = Logger()


class AtomicFile:
    def __init__(
        self,
        path: str,
        *,
        fsync: Callable[[int], None] = os.fsync,
        replace: Callable[[str, str], None] = os.replace,
    ) -> None:
        self.path = str(Path(path).absolute())
        self.name = os.path.basename(self.path)
        # Injectable so tests can make the disk fail at each step.
        self._fsync = fsync
        self._replace = replace

    def write(self, payload: bytes | Iterable[bytes]) -> None:
        """Replace the file with *payload* (or its pieces, in order); OSError
        if that could not be done, and any error the pieces raise, with
        the old file in place either way.

        Blocking: call it from a thread once the reactor runs.
        """
        pieces = [payload] if isinstance(payload, bytes) else payload
        folder = os.path.dirname(self.path)
        temp: str | None = None
        try:
            # mkstemp: a random name, O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600.
            fd, temp = tempfile.mkstemp(prefix=self._temp_prefix(), suffix=".tmp", dir=folder)
            with open(fd, "wb") as handle:
                os.fchmod(fd, self._mode())
                for piece in pieces:
                    handle.write(piece)
                handle.flush()
                self._fsync(handle.fileno())
            self._replace(temp, self.path)
        except BaseException:
            if temp is not None:
                try:
                    os.unlink(temp)
                except OSError:
                    pass
            raise
        try:
            directory = os.open(folder, os.O_RDONLY)
            try:
                self._fsync(directory)
            finally:
                os.close(directory)
        except OSError as error:
            # The new file is already in place, so failing now would leave
            # memory and disk disagreeing; the next write syncs again.
            log.warn(
                "wrote {path} but could not sync its folder: {error}",
                path=self.path,
                error=error.strerror or str(error),
            )

    def _temp_prefix(self) -> str:
        # Temp files are .<name>.<random>.tmp; remove_stale_temps finds them.
        return f".{self.name}."

    def remove_stale_temps(self) -> list[str]:
        """Delete temp files a killed writer left behind (never the real file).

        Only regular files and symbolic links are removed; unlinking a link
        removes the link, never what it points to.
        """
        folder = os.path.dirname(self.path)
        removed = []
        for stale in Path(folder).glob(f"{glob.escape(self._temp_prefix())}*.tmp"):
            try:
                mode = os.lstat(stale).st_mode
                if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                    stale.unlink()
                    removed.append(str(stale))
            except OSError:
                pass
        return removed

    def _mode(self) -> int:
        """The permissions for the new file: the old file's, else private."""
        try:
            info = os.stat(self.path)
        except OSError:
            return 0o600
        return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else 0o600

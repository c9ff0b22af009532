"""Examples an input pipeline skipped (undecodable images, bad masks): counted and named.

One ``SkipLog`` serves the COCO index (``CocoIndex.skipped_images``), the VOC index
(``VocIndex.skipped``) and the ImageNet pipelines (``dataset.skip_log``); ``decode.py`` finds
the undecodable images and hands their names here.
"""

import logging
import threading

log = logging.getLogger(__name__)


class SkipLog:
    """Files a pipeline skipped, counted and named, each with the reason it was first skipped
    for. Thread safe: tf.data calls ``add`` from its own threads.

    ``skipped`` counts distinct files and ``files`` lists them in the order met; ``events``
    counts every skip (a file met in each of 3 passes counts 3 times); ``reasons`` maps each file
    to its reason; ``take_new()`` returns the skips since its last call (what
    ``classification.SkipReport`` prints at the end of each epoch). The first skip of a file is
    logged as a warning.
    """

    def __init__(self, split=""):
        self.split = split
        self._lock = threading.Lock()
        self._reasons = {}
        self.events = 0
        self._taken = 0
        self._new_files = []

    @property
    def skipped(self):
        return len(self._reasons)

    @property
    def files(self):
        return list(self._reasons)

    @property
    def reasons(self):
        return dict(self._reasons)

    def add(self, name, reason="undecodable image"):
        """Counts one skip of ``name`` (a str or bytes); True the first time this file is met."""
        name = name.decode() if isinstance(name, bytes) else str(name)
        with self._lock:
            self.events += 1
            first = name not in self._reasons
            if first:
                self._reasons[name] = reason
                self._new_files.append(name)
        if first:
            log.warning("skipping %s%s: %s", f"{self.split} " if self.split else "", name, reason)
        return first

    def add_all(self, names, reason="undecodable image"):
        """Counts one skip of each of ``names``."""
        for name in names:
            self.add(name, reason)

    def take_new(self):
        """(skips since the last call, the files first met since then)."""
        with self._lock:
            count, self._taken = self.events - self._taken, self.events
            new, self._new_files = self._new_files, []
            return count, new

    def summary(self):
        if not self.events:
            return f"{self.split}: no skipped images"
        shown = ", ".join(self.files[:5]) + (" ..." if self.skipped > 5 else "")
        return (f"{self.split}: skipped {self.events} image reads "
                f"({self.skipped} distinct files: {shown})")

    def __repr__(self):
        return f"SkipLog({self.split!r}, skipped={self.skipped}, events={self.events})"

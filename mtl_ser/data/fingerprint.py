"""Content digests of files, cached so that re-runs over a large corpus cost one stat per file.

A prepared folder is keyed on its inputs' contents (see `mtl_ser.data.corpora.base`); this
module computes those digests. A cached digest is reused only while the file's size,
modification time, change time (``st_ctime_ns``, which no copying tool can set back) and inode
are all unchanged; otherwise the file is read again. So a file replaced by another of the same
name, size and an older modification time (``cp -p``, ``tar``, ``rsync -a``) is always noticed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Stored in a prepared folder; maps an absolute path to [size, mtime_ns, ctime_ns, inode, digest].
DIGEST_CACHE_FILE = ".digests.json"
_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    """BLAKE2b (128-bit) hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def text_digest(data) -> str:
    """BLAKE2b (128-bit) hex digest of a JSON-serialisable value (keys sorted)."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class DigestCache:
    """File digests remembered across runs in ``cache_file`` (an unreadable cache is ignored).

    ``digest(path)`` returns the content digest of ``path``; ``save()`` writes the cache
    atomically (entries of files not asked about in this run are dropped).
    """

    def __init__(self, cache_file: str | Path):
        self.cache_file = Path(cache_file)
        try:
            loaded = json.loads(self.cache_file.read_text())
            self._old = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            self._old = {}
        self._new: dict[str, list] = {}
        self.read_files = 0  # how many files were read (not answered from the cache)

    def digest(self, path: str | Path) -> str:
        """The content digest of ``path`` (see `file_digest`); OSError when it cannot be read."""
        key = str(Path(path).absolute())
        st = os.stat(key)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        old = self._old.get(key)
        if isinstance(old, list) and len(old) == 5 and old[:4] == stamp:
            digest = old[4]
        else:
            digest = file_digest(key)
            self.read_files += 1
        self._new[key] = [*stamp, digest]
        return digest

    def save(self) -> None:
        """Writes the entries used in this run (atomically)."""
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(self.cache_file.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self._new))
        os.replace(tmp, self.cache_file)

"""A result cache that survives interruptions: one verified JSON file per finished task."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_write_text

__all__ = ["ResultCache", "fingerprint", "stage_checkpoint"]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def fingerprint(settings: Any) -> str:
    """SHA-256 of the canonical JSON of ``settings`` (what a cached result depends on)."""
    return hashlib.sha256(_canonical(settings).encode()).hexdigest()


def stage_checkpoint(checkpoint: Any, stage: str) -> Path | None:
    """The checkpoint of one evaluation stage of a task, beside its training ``checkpoint``
    (``<name>-<stage>.pt``), or None without one: a stopped task resumes mid-evaluation."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}-{stage}.pt")


class ResultCache:
    """Finished results under ``folder``, one file per key.

    Each file holds the key, the settings fingerprint, the payload and the SHA-256 of the
    payload. It is written atomically, so an interruption leaves either the old file or none;
    a file that is unreadable, truncated, edited or computed under other settings is reported
    and treated as missing, never reused.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: Sequence[str]) -> Path:
        name = "__".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(part)) for part in key)
        return self.folder / f"{name}.json"

    def load(self, key: Sequence[str], settings_fingerprint: str) -> dict | None:
        """The cached payload, or None (missing, corrupt or stale: the caller recomputes)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
            payload = entry["payload"]
            ok = (entry["key"] == [str(k) for k in key]
                  and entry["sha256"] == hashlib.sha256(_canonical(payload).encode()).hexdigest())
        except (ValueError, KeyError, TypeError, OSError) as exc:
            warnings.warn(f"cache entry {path} is unreadable ({exc!r}); recomputing it", RuntimeWarning,
                          stacklevel=2)
            return None
        if not ok:
            warnings.warn(f"cache entry {path} fails its checksum; recomputing it", RuntimeWarning, stacklevel=2)
            return None
        if entry.get("fingerprint") != settings_fingerprint:
            return None  # computed under other settings: silently stale
        return payload

    def store(self, key: Sequence[str], settings_fingerprint: str, payload: dict) -> Path:
        """Write one result atomically."""
        entry = {"key": [str(k) for k in key], "fingerprint": settings_fingerprint,
                 "sha256": hashlib.sha256(_canonical(payload).encode()).hexdigest(), "payload": payload}
        return atomic_write_text(self.path(key), json.dumps(entry) + "\n")

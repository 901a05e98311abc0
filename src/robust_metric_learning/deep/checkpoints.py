"""Checkpoints of :func:`~robust_metric_learning.deep.train_embedding`: written atomically with a
SHA-256 of their content, verified on read (a damaged file is reported with its path)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_open

__all__ = ["CheckpointError", "load_checkpoint"]


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: what the outer dict of a checkpoint file says it is (see :func:`_save`)
_CKPT_FORMAT = "robust_metric_learning.train_embedding checkpoint"
_CKPT_VERSION = 1
_STATE_KEYS = ("model", "optimizer", "settings_key", "loss", "seconds", "n_adversarial")


class CheckpointError(ValueError):
    """A training checkpoint that cannot be resumed from (damaged, unverifiable, other settings).

    The message names the file. ``reason`` is ``"damaged"``, ``"unverified"`` or ``"settings"``.
    """

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


def _save(path: Path, state: dict) -> None:
    """Write ``state`` with its SHA-256, atomically.

    The file is a ``torch.save`` of a small dict: ``format``, ``version``, ``sha256`` and
    ``payload``, a uint8 tensor holding the bytes of ``torch.save(state)``. Reading needs
    ``weights_only=True`` only, and any change to the payload (a flipped bit in the tensor
    data) is caught by the checksum.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    wrapper = {"format": _CKPT_FORMAT, "version": _CKPT_VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
               "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    with atomic_open(path, "wb") as f:  # temp file in the same folder, fsync, os.replace
        torch.save(wrapper, f)


def _first_line(exc: BaseException) -> str:
    import pickle

    if isinstance(exc, pickle.UnpicklingError):  # torch's text suggests weights_only=False: never
        return "UnpicklingError: not a weights-only torch file"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _load(path: Path, device: torch.device) -> dict:
    """The training state saved in ``path``, verified; CheckpointError naming ``path`` otherwise."""
    raw = path.read_bytes()  # an unreadable file raises OSError (with the path) as it is

    def damaged(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is damaged: {why}", reason="damaged")

    try:
        outer = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on truncated or garbage files
        raise damaged(f"{len(raw)} bytes that cannot be read as a checkpoint (truncated or corrupt; "
                      f"{_first_line(exc)})") from None
    if not isinstance(outer, dict):
        raise damaged(f"it holds a {type(outer).__name__}, not a train_embedding checkpoint")
    if outer.get("format") != _CKPT_FORMAT:
        if all(k in outer for k in _STATE_KEYS):
            raise CheckpointError(f"checkpoint {path} was written without a checksum (by an older version of "
                                  "this package) and cannot be verified", reason="unverified")
        raise damaged(f"it is not a train_embedding checkpoint (keys {sorted(map(str, outer))[:8]})")
    if outer.get("version") != _CKPT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {outer.get('version')!r}; this version "
                              f"reads {_CKPT_VERSION}", reason="unverified")
    payload, stored = outer.get("payload"), outer.get("sha256")
    if not (isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8 and payload.dim() == 1
            and isinstance(stored, str)):
        raise damaged("its payload or checksum entry is missing or malformed")
    data = payload.numpy().tobytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != stored:
        raise damaged(f"its SHA-256 does not match (stored {stored[:16]}..., content {digest[:16]}...): "
                      "the file changed after it was written")
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:
        raise damaged(f"its verified payload cannot be read ({_first_line(exc)})") from None
    if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
        raise damaged("its payload lacks the training state")
    n = len(state["loss"])
    if n < 1 or len(state["seconds"]) != n or len(state["n_adversarial"]) != n:
        raise damaged("its history lists are empty or of different lengths")
    return state


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict:
    """The training state in a checkpoint written by :func:`train_embedding`, checksum verified.

    Returns a dict with ``model`` (state dict), ``optimizer``, ``settings_key``, the
    per-epoch ``loss``, ``seconds`` and ``n_adversarial``, and (when written by this version)
    ``defense``, the defence's state between batches (``Defense.state_dict()``). Raises :class:`CheckpointError`
    (naming the file) when the file is damaged or has no checksum, OSError when unreadable.
    """
    return _load(Path(path), torch.device(map_location) if isinstance(map_location, str) else map_location)


def _model_signature(model: nn.Module) -> dict[str, Any]:
    """Names, shapes and dtypes of the state dict: a checkpoint of another architecture is other settings."""
    return {k: [list(v.shape), str(v.dtype)] for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _check_checkpoint_path(path: Path) -> None:
    """Fail before training when ``path`` cannot be written (a folder, an unwritable place)."""
    if path.is_dir():
        raise ValueError(f"checkpoint must be a file path, got the folder {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"checkpoint {path} cannot be written: {exc.strerror or exc} "
                         f"({type(exc).__name__})") from None

"""Checkpoints of :func:`~robust_metric_learning.deep.train_embedding` (after each epoch) and of
:func:`~robust_metric_learning.deep.adversarial_retrieval` (after each budget): written atomically
with a SHA-256 of their content, verified on read (a damaged file is reported with its path)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

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
    """A training or evaluation checkpoint that cannot be resumed from (damaged, unverifiable,
    written with other settings, or a checkpoint of the other kind).

    The message names the file. ``reason`` is ``"damaged"``, ``"unverified"``, ``"settings"`` or
    ``"kind"`` (a checkpoint of this package, but of the other function: never overwritten).
    """

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is damaged: {why}", reason="damaged")


def _check_checkpoint_arguments(checkpoint: Any, resume: Any) -> Path | None:
    """``checkpoint`` (None or a file path, not a folder) and ``resume`` (True, False or
    "compatible") checked, as every function with a checkpoint takes them."""
    if isinstance(resume, (int, float)) and not isinstance(resume, bool) or resume not in (True, False, "compatible"):
        raise ValueError(f"resume must be True, False or 'compatible', got {resume!r}")
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got {type(checkpoint).__name__}")
    path = Path(checkpoint)
    if path.is_dir():
        raise ValueError(f"checkpoint must be a file path, got the folder {path}")
    if path.exists() and not path.is_file():  # a device or a pipe: writing would replace it
        raise ValueError(f"checkpoint must be a regular file path, got {path}, which is not a regular file")
    return path


def _save(path: Path, state: dict, *, kind: str = _CKPT_FORMAT) -> None:
    """Write ``state`` with its SHA-256, atomically.

    The file is a ``torch.save`` of a small dict: ``format`` (``kind``), ``version``, ``sha256``
    and ``payload``, a uint8 tensor holding the bytes of ``torch.save(state)``. Reading needs
    ``weights_only=True`` only, and any change to the payload (a flipped bit in the tensor
    data) is caught by the checksum.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    wrapper = {"format": kind, "version": _CKPT_VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
               "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    with atomic_open(path, "wb") as f:  # temp file in the same folder, fsync, os.replace
        torch.save(wrapper, f)


def _first_line(exc: BaseException) -> str:
    import pickle

    if isinstance(exc, pickle.UnpicklingError):  # torch's text suggests weights_only=False: never
        return "UnpicklingError: not a weights-only torch file"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _load_verified(path: Path, device: torch.device, *, kind: str = _CKPT_FORMAT,
                   legacy_keys: tuple[str, ...] = ()) -> dict:
    """The state dict saved by :func:`_save` with format ``kind`` in ``path``, its checksum verified;
    CheckpointError naming ``path`` otherwise. A bare dict holding ``legacy_keys`` (an older,
    unchecksummed file) is reported as unverifiable rather than damaged."""
    raw = path.read_bytes()  # an unreadable file raises OSError (with the path) as it is

    def damaged(why: str) -> CheckpointError:
        return _damaged(path, why)

    try:
        outer = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on truncated or garbage files
        raise damaged(f"{len(raw)} bytes that cannot be read as a checkpoint (truncated or corrupt; "
                      f"{_first_line(exc)})") from None
    if not isinstance(outer, dict):
        raise damaged(f"it holds a {type(outer).__name__}, not a {kind}")
    if outer.get("format") != kind:
        if legacy_keys and all(k in outer for k in legacy_keys):
            raise CheckpointError(f"checkpoint {path} was written without a checksum (by an older version of "
                                  "this package) and cannot be verified", reason="unverified")
        found = outer.get("format")
        if found in _FORMATS:  # this package's, of the other function
            raise CheckpointError(f"checkpoint {path} is a {found}, not a {kind}; pass another checkpoint path",
                                  reason="kind")
        raise damaged(f"it is not a {kind}" + (f" (it is a {found!r})" if isinstance(found, str)
                                               else f" (keys {sorted(map(str, outer))[:8]})"))
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
    if not isinstance(state, dict):
        raise damaged(f"its payload holds a {type(state).__name__}, not a dict")
    return state


def _load(path: Path, device: torch.device) -> dict:
    """The training state saved in ``path``, verified; CheckpointError naming ``path`` otherwise."""
    state = _load_verified(path, device, legacy_keys=_STATE_KEYS)
    if any(k not in state for k in _STATE_KEYS):
        raise _damaged(path, "its payload lacks the training state")
    n = len(state["loss"])
    if n < 1 or len(state["seconds"]) != n or len(state["n_adversarial"]) != n:
        raise _damaged(path, "its history lists are empty or of different lengths")
    return state


def _resume(read: Callable[[], dict], resume: bool | str, what: str) -> dict | None:
    """``read()`` under the ``resume`` rules shared by training and evaluation checkpoints.

    ``read`` raises :class:`CheckpointError` for a file it cannot resume from. With
    ``resume=True`` that error propagates (a damaged or unverifiable file's message says how to
    start afresh); with ``"compatible"`` the result is None (start afresh), with a warning
    naming the file unless it only holds other settings. A checkpoint of the other kind is
    never started over (that would overwrite it).
    """
    try:
        return read()
    except CheckpointError as exc:
        if exc.reason == "kind":
            raise
        if resume != "compatible":
            if exc.reason != "settings":
                raise CheckpointError(f"{exc}; pass resume='compatible' to start afresh (overwriting it), "
                                      "resume=False, or another checkpoint path", reason=exc.reason) from None
            raise
        if exc.reason != "settings":  # other settings: documented, silent restart
            warnings.warn(f"{exc}; resume='compatible': {what} starts afresh and will overwrite it",
                          UserWarning, stacklevel=3)
        return None


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
    """Fail before the work starts when ``path`` (checked by :func:`_check_checkpoint_arguments`)
    cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"checkpoint {path} cannot be written: {exc.strerror or exc} "
                         f"({type(exc).__name__})") from None


#: the format of :func:`~robust_metric_learning.deep.adversarial_retrieval`'s checkpoints
_EVAL_FORMAT = "robust_metric_learning.adversarial_retrieval checkpoint"
_FORMATS = (_CKPT_FORMAT, _EVAL_FORMAT)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _evaluation_key(model: nn.Module, X: torch.Tensor, labels: torch.Tensor, qrows: torch.Tensor,
                    eps: list[float], attack: Any) -> str:
    """What an adversarial evaluation depends on: the model's parameters and buffers, the inputs,
    labels and query rows (their bytes), the budgets, and the attack by its ``repr``. An attack
    whose repr holds a memory address (a function, an object without its own repr) differs in
    every process, so it cannot be checkpointed: ValueError."""
    described = repr(attack)
    if re.search(r" at 0x[0-9a-fA-F]+", described):
        raise ValueError(f"checkpoint needs an attack whose repr identifies it (its settings, no memory address), "
                         f"to recognise its own evaluation when resuming; got {described[:200]}")
    h = hashlib.sha256()
    h.update(json.dumps({"model": type(model).__qualname__, "eps": eps, "attack": described,
                         "shape": list(X.shape), "dtype": str(X.dtype)}, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        if isinstance(t, torch.Tensor):
            h.update(name.encode())
            h.update(_tensor_bytes(t))
    for t in (X, labels, qrows):
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _read_evaluation(path: Path, key: str, n_attacked: int, n_queries: int, dim: int, n_eps: int) -> dict:
    """An evaluation's saved progress (``done`` budgets of ``n_eps``, in increasing order), checked:
    CheckpointError naming ``path`` when damaged or written for another evaluation."""
    state = _load_verified(path, torch.device("cpu"), kind=_EVAL_FORMAT)

    def damaged(why: str) -> CheckpointError:
        return _damaged(path, why)

    if state.get("key") != key:
        raise CheckpointError(f"checkpoint {path} was written for another evaluation (model, inputs, labels, "
                              "queries, eps or attack differ); pass resume=False, resume='compatible' or "
                              "another checkpoint path", reason="settings")
    done, broken, emb, per_eps = (state.get(k) for k in ("done", "broken", "broken_emb", "per_eps"))
    if not (isinstance(done, int) and 1 <= done <= n_eps):
        raise damaged(f"its count of finished budgets {done!r} is not in 1..{n_eps}")
    if not (isinstance(broken, torch.Tensor) and broken.dtype == torch.bool and broken.shape == (n_attacked,)):
        raise damaged("its per-query 'broken' flags are missing or of the wrong shape")
    if not (isinstance(emb, torch.Tensor) and emb.dtype == torch.float64 and emb.shape == (n_attacked, dim)
            and bool(torch.isfinite(emb).all())):
        raise damaged("its embeddings of the attacked queries are missing, of the wrong shape or not finite")
    if not (isinstance(per_eps, list) and len(per_eps) == done and all(
            isinstance(r, list) and len(r) == 8 and isinstance(r[0], int) and 0 <= r[0] < n_eps
            and all(isinstance(v, float) for v in (*r[1:4], r[5])) and isinstance(r[4], torch.Tensor)
            and r[4].dtype == torch.bool and r[4].shape == (n_queries,)
            and all(isinstance(v, int) and v >= 0 for v in r[6:]) for r in per_eps)):
        raise damaged("its per-budget results are missing or malformed")
    return state

"""The training loop for embedding models: Adam on class-balanced batches, checkpoints, resume."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._parallel import eval_mode, progress_bar
from .._validation import (
    check_model_output,
    check_positive_int,
    check_real,
    check_seed,
    check_unit_interval,
)
from .checkpoints import (
    CheckpointError,
    _check_checkpoint_arguments,
    _check_checkpoint_path,
    _first_line,
    _load,
    _model_signature,
    _resume,
    _save,
    _settings_key,
)
from .hyperparams import hyperparameters
from .lipschitz import _body
from .robust import Defense, get_defense
from .sampler import BalancedBatchSampler, PairBatchSampler

__all__ = ["TrainHistory", "train_embedding", "embed", "hyperparameters"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The largest ``lr``: Adam's steps (up to ``lr / (1 - beta1) = 10 lr``, the first) must be float32
#: numbers, with room for rounding.
_MAX_LR = _FLOAT32_MAX / 100


@dataclass
class TrainHistory:
    """Per-epoch mean loss, seconds and adversarial inputs made, and the epochs run."""

    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    n_adversarial: list[int] = field(default_factory=list)
    resumed_from: int = 0

    @property
    def epochs(self) -> int:
        return len(self.loss)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _inputs(model: nn.Module, X: Any) -> torch.Tensor:
    """``X`` checked (finite, in [0, 1]) and cast to the model's floating dtype (on CPU)."""
    p = next(model.parameters(), None)
    return check_unit_interval(X, name="X").to(p.dtype if p is not None else torch.float32)


def _check_module(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _apply(fn, xb: torch.Tensor, model: nn.Module, *, what: str = "X") -> torch.Tensor:
    """``fn(xb)``, a failure (wrong input shape, ...) turned into a ValueError naming ``what``'s rows."""
    try:
        return fn(xb)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        shape = getattr(model, "input_shape", None)
        hint = (f"; the model takes inputs of shape {tuple(shape)} ({int(np.prod(shape))} values per row)"
                if shape is not None else "")
        raise ValueError(f"model cannot be applied to {what}: rows of shape {tuple(xb.shape[1:])}{hint} "
                         f"({type(exc).__name__}: {exc})") from exc


@torch.no_grad()
def embed(model: nn.Module, X: Any, *, batch_size: int = 1024, body: bool = False,
          keep_dtype: bool = False) -> torch.Tensor:
    """Embeddings of ``X`` (eval mode, batched, on the model's device; returned on CPU, as
    float32 unless ``keep_dtype``: in the model's dtype, as an attack measures its result).

    ``body=True`` returns the output before the final ``L2Normalize`` (if any). A model that
    cannot take ``X``'s rows raises ValueError; NaN or infinite embeddings raise
    FloatingPointError.
    """
    _check_module(model)
    batch_size = check_positive_int(batch_size, name="batch_size")
    X = _inputs(model, X)
    fn = _body(model)[0] if body else model
    device = _device_of(model)
    with eval_mode(model):
        outs = []
        for i in range(0, len(X), batch_size):
            xb = X[i:i + batch_size].to(device)
            if body and hasattr(model, "input_shape"):
                xb = xb.reshape(len(xb), -1)
            out = _apply(fn, xb, model) if i == 0 else fn(xb)
            check_model_output(out, n_rows=len(xb), what="X", first_row=i)
            outs.append((out if keep_dtype else out.float()).cpu())
        return torch.cat(outs)


def _check_labels(y: Any, n: int) -> np.ndarray:
    y_np = np.asarray(y)
    if y_np.ndim != 1 or len(y_np) != n:
        raise ValueError(f"y must have shape ({n},), got {y_np.shape}")
    if y_np.dtype.kind == "f" and not np.isfinite(y_np).all():
        raise ValueError(f"y contains NaN or infinity in {int((~np.isfinite(y_np)).sum())} label(s)")
    if y_np.dtype.kind in "cVM":
        raise ValueError(f"y must hold class labels (ints or strings), got dtype {y_np.dtype}")
    try:
        classes, codes, counts = np.unique(y_np, return_inverse=True, return_counts=True)
    except TypeError as exc:
        raise ValueError(f"y must hold labels of one comparable type: {exc}") from None
    if len(classes) < 2:
        raise ValueError(f"y must contain at least 2 classes for a metric loss, got {len(classes)}")
    if counts.min() < 2:
        raise ValueError(f"y: every class needs at least 2 samples (a positive for each), class "
                         f"{classes[counts.argmin()].item()!r} has {counts.min()}")
    return codes.reshape(-1)


def train_embedding(model: nn.Module, X: Any, y: Any, *, loss: Any = None, miner: Any = None,
                    defense: str | Defense = "natural", epochs: int = 10, m: int = 4,
                    classes_per_batch: int | None = None, batches_per_epoch: int | None = None,
                    pairs: int | None = None, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
                    checkpoint: str | os.PathLike | None = None, resume: bool | Literal["compatible"] = True,
                    progress: bool | None = None) -> TrainHistory:
    """Train ``model`` in place with Adam on class-balanced mini-batches.

    Parameters
    ----------
    model : torch.nn.Module
        Maps a batch of inputs (first axis) to ``(batch, dim)`` embeddings; trained on its
        current device.
    X : array-like or tensor of shape (n, ...), values in [0, 1]
    y : array-like of shape (n,)
        At least 2 classes, each with at least 2 samples.
    loss : pytorch-metric-learning loss, default=TripletMarginLoss(margin=0.2)
    miner : pytorch-metric-learning miner, default=None (every triplet of the batch)
    defense : str or Defense, default="natural"
        A name of :data:`~robust_metric_learning.deep.DEFENSES` (``"natural"``, ``"ours"``,
        ``"naive"``, ``"est"``, ``"act"``, ``"hm"``, ``"noise"``; default parameters) or a
        defence object (:func:`~robust_metric_learning.deep.get_defense`). A defence that
        keeps state between batches (HM's gradual target) is reset when training starts
        afresh, and its state is saved in the checkpoint and restored on resume.
    epochs : int, default=10
    m, classes_per_batch, batches_per_epoch
        The :class:`~robust_metric_learning.deep.sampler.BalancedBatchSampler`.
    pairs : int, default=None
        Instead of class-balanced batches, batches of ``pairs`` anchor-positive pairs
        (:class:`~robust_metric_learning.deep.sampler.PairBatchSampler`: every sample an anchor
        once per epoch), as the ranking-attack literature trains; use a miner for such batches
        (:class:`~robust_metric_learning.deep.miners.PairedRandomTripletMiner`). ``m``,
        ``classes_per_batch`` and ``batches_per_epoch`` are then unused. Every batch needs two
        classes, so ``y`` must have at least as many samples outside its largest class as there
        are batches (about ``n / pairs``); else a ValueError before training says which ``pairs``
        would do.
    lr, weight_decay : float
        Adam's (finite; ``0 < lr <= 3.4e36``, so that Adam's float32 steps (up to 10 lr) are
        finite; ``0 <= weight_decay <=`` the largest float32).
    seed : int, default=0
        Seeds the batches, the attacks' random starts and torch's global generator at each
        epoch, so a run (and a resumed run) is deterministic on a given device.
    checkpoint : path, default=None
        Saved atomically after every epoch (model, optimiser, history, settings) with the
        SHA-256 of its content. Checked to be writable before training starts.
    resume : bool or "compatible", default=True
        Continue from ``checkpoint`` if it exists (loaded with ``weights_only=True``, its
        checksum verified). It must have been written with the same settings (``epochs`` may
        grow, not shrink; the loss and miner are compared by :func:`hyperparameters`, the model
        by its parameter names, shapes and dtypes), else :class:`CheckpointError` (a ValueError
        naming the file); so must a damaged checkpoint (truncated, corrupt, checksum mismatch)
        and one written without a checksum by an older version. ``"compatible"``: in all these
        cases training starts afresh with a warning naming the file, and overwrites it.
        ``False``: the checkpoint is not read (and is overwritten).
    progress : bool, default=None
        tqdm bar over the batches; default: when stderr is a terminal.

    Returns
    -------
    TrainHistory

    Raises
    ------
    FloatingPointError
        When the loss, the model's output (on clean or adversarial inputs) or a gradient is
        NaN or infinite during training; the message names the epoch and the batch. The
        parameters, the optimiser and the model's buffers are left as they were after the
        previous batch, and the checkpoint holds the last completed epoch.
    """
    from pytorch_metric_learning import losses

    _check_module(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    for name, p in params:
        if not bool(torch.isfinite(p.detach()).all()):
            raise ValueError(f"model parameter {name!r} holds NaN or infinity before training")
    X = _inputs(model, X)
    codes = _check_labels(y, len(X))
    y_t = torch.as_tensor(codes, dtype=torch.long)
    epochs = check_positive_int(epochs, name="epochs")
    lr = check_real(lr, name="lr", low=0.0, low_open=True)
    if lr > _MAX_LR:
        raise ValueError(f"lr must be a finite positive number whose Adam steps (up to 10 lr) float32 can hold, "
                         f"at most {_MAX_LR:.6g}, got {lr!r}")
    weight_decay = check_real(weight_decay, name="weight_decay", low=0.0)
    if weight_decay > _FLOAT32_MAX:
        raise ValueError(f"weight_decay must be a finite number >= 0 that float32 can hold (Adam's), at most "
                         f"{_FLOAT32_MAX:.6g}, got {weight_decay!r}")
    seed = check_seed(seed, name="seed")
    if batches_per_epoch is not None:
        check_positive_int(batches_per_epoch, name="batches_per_epoch")
    path = _check_checkpoint_arguments(checkpoint, resume)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    loss_fn = losses.TripletMarginLoss(margin=0.2) if loss is None else loss
    if not callable(loss_fn):
        raise TypeError(f"loss must be a callable loss (e.g. a pytorch-metric-learning loss), got "
                        f"{type(loss_fn).__name__} {loss_fn!r}")
    if miner is not None and not callable(miner):
        raise TypeError(f"miner must be None or a callable miner, got {type(miner).__name__} {miner!r}")
    defense = get_defense(defense)
    if pairs is None:
        sampler = BalancedBatchSampler(codes, m=m, classes_per_batch=classes_per_batch,
                                       n_batches=batches_per_epoch, seed=seed)
    else:
        sampler = PairBatchSampler(codes, pairs=check_positive_int(pairs, name="pairs"), seed=seed)
        sampler.require_two_classes(name="y")  # else a batch of one class fails part-way through training
    device = _device_of(model)
    with eval_mode(model):  # the model takes X's rows and returns finite (n, dim) embeddings, before any training
        with torch.no_grad():
            probe = X[:2].to(device)
            out = _apply(model, probe, model)
        check_model_output(out, n_rows=len(probe), what="X (before training)")
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = TrainHistory()
    settings = {"defense": repr(defense), "loss": hyperparameters(loss_fn), "miner": hyperparameters(miner),
                "epochs": epochs, "m": m, "classes_per_batch": classes_per_batch, "batches": len(sampler), "lr": lr,
                "weight_decay": weight_decay, "seed": seed, "n": len(X), "model": _model_signature(model),
                **({} if pairs is None else {"pairs": pairs})}  # (absent by default: older checkpoints match)
    key = _settings_key({k: v for k, v in settings.items() if k != "epochs"})
    start, state = 0, None
    if path is not None and resume and path.exists():
        def read() -> dict:
            state = _load(path, device)
            if state.get("settings_key") != key:
                raise CheckpointError(f"checkpoint {path} was written with other settings; pass resume=False, "
                                      "resume='compatible' or another checkpoint path", reason="settings")
            if len(state["loss"]) > epochs:
                raise CheckpointError(f"checkpoint {path} holds {len(state['loss'])} epochs, more than "
                                      f"epochs={epochs}; pass resume=False, resume='compatible' or another "
                                      "checkpoint path", reason="settings")
            snapshot = (_copy_state(model.state_dict()), _copy_state(opt.state_dict()))
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                model.load_state_dict(snapshot[0])
                opt.load_state_dict(snapshot[1])
                raise CheckpointError(f"checkpoint {path} does not fit the model or optimiser: "
                                      f"{_first_line(exc)}", reason="damaged") from None
            return state

        state = _resume(read, resume, "training")
    defense.reset()  # state kept between batches (HM's gradual target): a fresh run starts from none
    if state is not None:
        if isinstance(state.get("defense"), dict):
            defense.load_state_dict(state["defense"])
        history = TrainHistory(loss=[float(v) for v in state["loss"]], seconds=[float(v) for v in state["seconds"]],
                               n_adversarial=[int(v) for v in state["n_adversarial"]])
        start = history.resumed_from = len(history.loss)
    if path is not None and start < epochs:
        _check_checkpoint_path(path)
    buffers = list(model.buffers())  # batch-norm statistics and counters, restored if a batch fails
    flags: list[torch.Tensor] = []  # per forward call of the current batch: all outputs finite

    def watch(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            flags.append(torch.isfinite(output.detach()).all())

    hook = model.register_forward_hook(watch)
    model.train()
    try:
        for epoch in range(start, epochs):
            torch.manual_seed(seed * 100003 + epoch)
            generator = torch.Generator().manual_seed(seed * 100003 + epoch)
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            total, n_adv, n_batches = 0.0, 0, 0
            bar = progress_bar(progress, len(sampler), f"epoch {epoch + 1}/{epochs} ({defense.name})", unit="batch")
            for batch in sampler:
                idx = torch.as_tensor(batch)
                xb, yb = X[idx].to(device), y_t[idx].to(device)
                kept = [b.clone() for b in buffers]  # batch-norm statistics, restored if the batch fails
                kept_defense = defense.state_dict()
                flags.clear()
                opt.zero_grad(set_to_none=True)
                try:
                    value, made = defense.step_loss(model, xb, yb, loss_fn, miner, generator)
                except FloatingPointError as exc:  # inside the step (an attack's forward pass, the loss)
                    _restore(buffers, kept, defense, kept_defense)
                    _raise_not_finite(None, [], [], epoch=epoch, epochs=epochs, batch=n_batches,
                                      n_batches=len(sampler), lr=lr, path=path, cause=exc)
                if not (isinstance(value, torch.Tensor) and value.numel() == 1):
                    raise TypeError(f"loss must return a scalar tensor, got {type(value).__name__}"
                                    + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""))
                if not value.requires_grad:
                    raise ValueError(f"the loss at epoch {epoch + 1}/{epochs}, batch {n_batches + 1}/{len(sampler)} "
                                     "is not attached to the model's graph (requires_grad=False); a loss must "
                                     "be computed from the embeddings it is given")
                value.backward()
                grads = [(n, p.grad) for n, p in params if p.grad is not None]
                checks = flags + [torch.isfinite(value.detach()).all()] + [torch.isfinite(g).all() for _, g in grads]
                if not bool(torch.stack([c.to(device) for c in checks]).all()):
                    _restore(buffers, kept, defense, kept_defense)
                    _raise_not_finite(value, flags, grads, epoch=epoch, epochs=epochs, batch=n_batches,
                                      n_batches=len(sampler), lr=lr, path=path)
                opt.step()
                total += float(value.detach())
                n_adv += made
                n_batches += 1
                bar.update(1)
                bar.set_postfix(loss=f"{total / n_batches:.4f}")
            bar.close()
            history.loss.append(total / max(n_batches, 1))
            history.seconds.append(time.perf_counter() - t0)
            history.n_adversarial.append(n_adv)
            if path is not None:
                _save(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "settings_key": key,
                             "loss": history.loss, "seconds": history.seconds,
                             "n_adversarial": history.n_adversarial, "defense": defense.state_dict()})
    finally:
        hook.remove()
        model.eval()
    return history


def _copy_state(state: Any) -> Any:
    """A deep copy of a (nested) state dict's tensors, so that it can be restored."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _copy_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_copy_state(v) for v in state)
    return state


def _restore(buffers: list[torch.Tensor], kept: list[torch.Tensor], defense: Defense, kept_defense: dict) -> None:
    """Put back the batch-norm statistics and the defence's state from before a failed batch."""
    for b, k in zip(buffers, kept):
        b.copy_(k)
    defense.load_state_dict(kept_defense)


def _raise_not_finite(value, flags, grads, *, epoch, epochs, batch, n_batches, lr, path,
                      cause: FloatingPointError | None = None) -> None:
    if cause is not None:  # raised inside the step: its message says what (the model's output, ...)
        what = f"inside the step: {cause}"
    elif not all(bool(f) for f in flags):
        what = "the model's output (on the batch or on its adversarial inputs) holds NaN or infinity"
    elif not math.isfinite(float(value.detach())):
        what = f"the loss is {float(value.detach())}"
    else:
        name = next(n for n, g in grads if not bool(torch.isfinite(g).all()))
        what = f"the gradient of parameter {name!r} holds NaN or infinity"
    saved = f"; checkpoint {path} holds the last completed epoch" if path is not None and epoch > 0 else ""
    raise FloatingPointError(
        f"training stopped at epoch {epoch + 1}/{epochs}, batch {batch + 1}/{n_batches} (0-based: epoch {epoch}, "
        f"batch {batch}): {what}. The parameters were not updated with this batch (the model holds its state "
        f"after the previous batch{saved}); try a smaller lr (now {lr:g}) or check the model and the loss"
    ) from cause

"""The training loop for embedding models: Adam on class-balanced batches, checkpoints, resume."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_model_output, check_positive_int, check_unit_interval
from .lipschitz import _body
from .robust import Defense, get_defense
from .sampler import BalancedBatchSampler

__all__ = ["TrainHistory", "train_embedding", "embed", "hyperparameters"]


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


@torch.no_grad()
def embed(model: nn.Module, X: Any, *, batch_size: int = 1024, body: bool = False) -> torch.Tensor:
    """Embeddings of ``X`` (eval mode, batched, on the model's device; returned on CPU).

    ``body=True`` returns the output before the final ``L2Normalize`` (if any).
    """
    X = _inputs(model, X)
    fn = _body(model)[0] if body else model
    was_training = model.training
    model.eval()
    device = _device_of(model)
    try:
        outs = []
        for i in range(0, len(X), batch_size):
            xb = X[i:i + batch_size].to(device)
            if body and hasattr(model, "input_shape"):
                xb = xb.reshape(len(xb), -1)
            out = fn(xb)
            check_model_output(out, n_rows=len(xb))
            outs.append(out.float().cpu())
        return torch.cat(outs)
    finally:
        model.train(was_training)


_SIMPLE = (bool, int, float, str, type(None))


def hyperparameters(obj: Any) -> Any:
    """A JSON-ready description of a loss, miner or other module by its constructor arguments.

    ``repr`` of a pytorch-metric-learning loss or miner leaves out its margins, so two losses
    with different margins would look alike; this lists every constructor argument stored under
    its own name (numbers, strings, tuples of them), then the sub-modules, recursively. Counters
    a module updates when called (such as a miner's ``num_triplets``) are not constructor
    arguments and are left out. Anything that is not a ``torch.nn.Module`` is its ``repr``.
    """
    if not isinstance(obj, nn.Module):
        return repr(obj)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [n for cls in type(obj).__mro__ if cls.__init__ is not object.__init__
             for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self" and p.kind in named]
    desc: dict[str, Any] = {"type": type(obj).__qualname__}
    for n in dict.fromkeys(names):
        v = obj.__dict__.get(n, ())
        if isinstance(v, _SIMPLE) or (isinstance(v, tuple) and v and all(isinstance(e, _SIMPLE) for e in v)):
            desc[n] = v
    desc.update({n: hyperparameters(child) for n, child in obj.named_children()})
    return desc


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def train_embedding(model: nn.Module, X: Any, y: Any, *, loss: Any = None, miner: Any = None,
                    defense: str | Defense = "natural", epochs: int = 10, m: int = 4,
                    classes_per_batch: int | None = None, batches_per_epoch: int | None = None,
                    lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
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
    loss : pytorch-metric-learning loss, default=TripletMarginLoss(margin=0.2)
    miner : pytorch-metric-learning miner, default=None (every triplet of the batch)
    defense : str or Defense, default="natural"
        ``"natural"``, ``"ours"``, ``"naive"``, ``"est"`` (default parameters) or a
        :mod:`~robust_metric_learning.deep.robust` object.
    epochs : int, default=10
    m, classes_per_batch, batches_per_epoch
        The :class:`~robust_metric_learning.deep.sampler.BalancedBatchSampler`.
    lr, weight_decay : float
        Adam's.
    seed : int, default=0
        Seeds the batches, the attacks' random starts and torch's global generator at each
        epoch, so a run (and a resumed run) is deterministic on a given device.
    checkpoint : path, default=None
        Saved atomically after every epoch (model, optimiser, history, settings).
    resume : bool or "compatible", default=True
        Continue from ``checkpoint`` if it exists (loaded with ``weights_only=True``); it must
        have been written with the same settings (``epochs`` may grow; the loss and miner are
        compared by :func:`hyperparameters`), else ValueError. ``"compatible"``: a checkpoint
        written with other settings is ignored (training starts afresh and overwrites it).
    progress : bool, default=None
        tqdm bar over the batches; default: when stderr is a terminal.

    Returns
    -------
    TrainHistory
    """
    from pytorch_metric_learning import losses

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    X = _inputs(model, X)
    y_np = np.asarray(y)
    if y_np.ndim != 1 or len(y_np) != len(X):
        raise ValueError(f"y must have shape ({len(X)},), got {y_np.shape}")
    _, codes = np.unique(y_np, return_inverse=True)
    y_t = torch.as_tensor(codes, dtype=torch.long)
    epochs = check_positive_int(epochs, name="epochs")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if resume not in (True, False, "compatible"):
        raise ValueError(f"resume must be True, False or 'compatible', got {resume!r}")
    loss_fn = losses.TripletMarginLoss(margin=0.2) if loss is None else loss
    defense = get_defense(defense)
    sampler = BalancedBatchSampler(codes, m=m, classes_per_batch=classes_per_batch,
                                   n_batches=batches_per_epoch, seed=seed)
    device = _device_of(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = TrainHistory()
    settings = {"defense": repr(defense), "loss": hyperparameters(loss_fn), "miner": hyperparameters(miner),
                "epochs": epochs, "m": m, "classes_per_batch": classes_per_batch, "batches": len(sampler), "lr": lr,
                "weight_decay": weight_decay, "seed": seed, "n": len(X)}
    key = _settings_key({k: v for k, v in settings.items() if k != "epochs"})
    path = Path(checkpoint) if checkpoint is not None else None
    start, state = 0, None
    if path is not None and resume and path.exists():
        state = torch.load(path, map_location=device, weights_only=True)
        if state.get("settings_key") != key:
            if resume != "compatible":
                raise ValueError(f"checkpoint {path} was written with other settings; pass resume=False, "
                                 "resume='compatible' or another checkpoint path")
            state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = TrainHistory(loss=list(state["loss"]), seconds=list(state["seconds"]),
                               n_adversarial=[int(v) for v in state["n_adversarial"]])
        start = history.resumed_from = len(history.loss)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    model.train()
    for epoch in range(start, epochs):
        torch.manual_seed(seed * 100003 + epoch)
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        total, n_adv, n_batches = 0.0, 0, 0
        bar = tqdm(sampler, disable=not show, desc=f"epoch {epoch + 1}/{epochs} ({defense.name})", leave=False)
        for batch in bar:
            idx = torch.as_tensor(batch)
            xb, yb = X[idx].to(device), y_t[idx].to(device)
            if n_batches == 0 and epoch == start:
                with torch.no_grad():
                    check_model_output(model(xb[:2]), n_rows=2)
            opt.zero_grad(set_to_none=True)
            value, made = defense.step_loss(model, xb, yb, loss_fn, miner, generator)
            value.backward()
            opt.step()
            total += float(value.detach())
            n_adv += made
            n_batches += 1
            bar.set_postfix(loss=f"{total / n_batches:.4f}")
        history.loss.append(total / max(n_batches, 1))
        history.seconds.append(time.perf_counter() - t0)
        history.n_adversarial.append(n_adv)
        if path is not None:
            _save(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "settings_key": key,
                         "loss": history.loss, "seconds": history.seconds,
                         "n_adversarial": history.n_adversarial})
    model.eval()
    return history


"""The one optimisation loop shared by every gradient-based learner."""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from .._parallel import progress_bar

__all__ = ["minimize"]


def minimize(
    objective: Callable[[torch.Tensor, int], torch.Tensor],
    param0: np.ndarray,
    *,
    solver: str = "adam",
    learning_rate: float = 1e-3,
    max_iter: int = 1000,
    tol: float = 0.0,
    n_iter_no_change: int = 10,
    min_iter: int = 0,
    on_epoch: Callable[[torch.Tensor, int], None] | None = None,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
    keep_best: bool | None = None,
    verbose: bool = False,
    desc: str = "fit",
    on_loss: Callable[[int, float], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Minimise ``objective(param, epoch)`` over a matrix parameter.

    Parameters
    ----------
    objective : callable
        Returns a scalar torch loss (autograd gives the gradient). ``epoch`` counts from 0.
    param0 : ndarray
        Starting point (L or M).
    solver : {"adam", "lbfgs", "sgd"}
        Adam and SGD take one step per epoch (full batch, or whatever the objective samples);
        L-BFGS runs its own line-searched iterations, ``max_iter`` in all.
    learning_rate : float
    max_iter : int
        Epochs (Adam/SGD) or L-BFGS iterations.
    tol : float, default=0
        Early stopping: stop when the loss has not improved by more than ``tol`` (relative)
        for ``n_iter_no_change`` epochs. 0 runs all ``max_iter`` epochs.
    min_iter : int, default=0
        Adam/SGD: never stop early before this many epochs.
    on_epoch : callable, optional
        Called with the detached parameter before each epoch (re-sampling triplets, say).
    project : callable, optional
        Applied to the parameter after each step (projected gradient, e.g. onto the PSD cone).
    keep_best : bool or None, default=None
        Return the iterate with the lowest loss (the final iterate is evaluated too) instead of
        the last one, and check for divergence. None means ``tol > 0``: with early stopping the
        objective is taken to be comparable between epochs; with ``tol = 0`` (objectives that
        re-sample their triplets every epoch, such as ARML's, whose losses are not comparable)
        the last iterate is returned.
    verbose : bool
        Progress bar with the loss.
    on_loss : callable, optional
        Adam/SGD: called with the epoch number (from 1) and the loss of the iterate the epoch
        started from.

    Returns
    -------
    param : ndarray, n_iter : int

    Warns
    -----
    ConvergenceWarning
        When ``max_iter`` is reached without early stopping (``tol > 0``), and (Adam/SGD, with
        ``keep_best``) when the run ends without any loss below the initial one although the
        loss moved: the steps diverged (lower ``learning_rate``); the initial parameter is then
        returned.
    """
    param = torch.tensor(np.asarray(param0), dtype=dtype, requires_grad=True)
    if solver == "adam":
        opt = torch.optim.Adam([param], lr=learning_rate)
    elif solver == "sgd":
        opt = torch.optim.SGD([param], lr=learning_rate)
    elif solver == "lbfgs":
        opt = torch.optim.LBFGS([param], lr=learning_rate, max_iter=max_iter, tolerance_change=tol or 1e-12,
                                history_size=20, line_search_fn="strong_wolfe")
    else:
        raise ValueError(f"solver must be 'adam', 'lbfgs' or 'sgd', got {solver!r}")

    bar = progress_bar(None if verbose else False, max_iter, desc, unit="it")  # verbose: on a terminal
    if keep_best is None:
        keep_best = tol > 0
    ref, stall, n_iter = np.inf, 0, 0  # ref: the loss early stopping measures improvement against
    first = best = worst = np.nan
    best_param = None
    diverged = False
    try:
        if solver == "lbfgs":
            if on_epoch is not None:
                on_epoch(param.detach(), 0)

            def closure():
                opt.zero_grad()
                loss = objective(param, 0)
                loss.backward()
                bar.update(1)
                return loss

            opt.step(closure)
            n_iter = opt.state[opt._params[0]].get("n_iter", max_iter)
            converged = n_iter < max_iter
        else:
            converged = tol <= 0

            def record(value: float) -> None:
                # the loss of the current iterate: keep the best one (a copy, before the step)
                nonlocal first, best, worst, best_param
                if not np.isfinite(value):  # never kept; counts as a rise
                    worst = np.inf
                    return
                if np.isnan(first):
                    first = worst = value
                worst = max(worst, value)
                if not value >= best:  # also when best is NaN (first call)
                    best = value
                    if keep_best:
                        best_param = param.detach().clone()

            for epoch in range(max_iter):
                if on_epoch is not None:
                    on_epoch(param.detach(), epoch)
                opt.zero_grad()
                loss = objective(param, epoch)
                loss.backward()
                value = float(loss.detach())
                record(value)
                opt.step()
                if project is not None:
                    with torch.no_grad():
                        param.copy_(project(param))
                n_iter = epoch + 1
                bar.update(1)
                if verbose:
                    bar.set_postfix(loss=f"{value:.5g}")
                if on_loss is not None:
                    on_loss(n_iter, value)
                if tol > 0:
                    if value < ref - tol * max(abs(ref), 1e-12) if np.isfinite(ref) else True:
                        ref, stall = value, 0
                    else:
                        stall += 1
                        if stall >= n_iter_no_change and n_iter >= min_iter:
                            converged = True
                            break
            if keep_best and n_iter:  # the iterate after the last step has not been evaluated yet
                if on_epoch is not None:
                    on_epoch(param.detach(), n_iter)
                with torch.no_grad():
                    record(float(objective(param, n_iter)))
            # the loss moved, but never below where it started: the steps diverged (judged only
            # where losses are comparable between epochs)
            diverged = keep_best and n_iter > 0 and not best < first and worst > first
    finally:
        bar.close()
    if diverged:
        warnings.warn(f"{desc}: the loss never went below its initial value {first:.6g} in {n_iter} "
                      f"iterations (the steps diverge; lower learning_rate); returning the initial parameter",
                      ConvergenceWarning, stacklevel=3)
    elif not converged:
        warnings.warn(f"{desc}: stopped after max_iter={max_iter} iterations without converging",
                      ConvergenceWarning, stacklevel=3)
    if best_param is not None:
        param = best_param
    return param.detach().cpu().to(torch.float64).numpy(), int(n_iter)

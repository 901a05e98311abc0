"""Upper bounds on a network's l2 Lipschitz constant, and certified input-space radii.

The bound of a ``nn.Sequential`` is the product of per-layer bounds, each an upper bound on the
layer's l2 operator norm (so the product bounds ``||f(x) - f(x')||_2 / ||x - x'||_2``):

* ``Linear``: its exact largest singular value (float64 SVD);
* ``Conv2d`` (any stride/padding, no groups/dilation): the largest singular value of the
  circular convolution on an ``(n + k) x (n + k)`` grid, maximised over the 2-D DFT frequencies.
  The zero-padded (and strided) convolution is that operator composed with an isometric
  embedding and a coordinate selection, so its norm is no larger;
* ``MaxPool2d``: ``ceil(k / s)`` (1 for non-overlapping windows), ``AvgPool2d``: ``ceil(k/s)/k``;
* ``BatchNorm`` (eval mode, running statistics): ``max |gamma| / sqrt(var + eps)``;
* ReLU, LeakyReLU (slope <= 1), Tanh, Flatten, Unflatten, Dropout (eval), Identity: 1;
  Sigmoid: 1/4.

:class:`~robust_metric_learning.deep.models.L2Normalize` is not globally Lipschitz; the radius
conversion :func:`certified_input_radius` handles it exactly instead (below).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .._parallel import eval_mode
from .._validation import check_positive_int, check_real
from .models import EmbeddingNet, L2Normalize

__all__ = ["lipschitz_bound", "certified_input_radius", "layer_bounds"]

#: Relative slack added to each computed singular value (float64 rounding of the SVD).
_SLACK = 1e-9

_ONE = (nn.ReLU, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Tanh)


def _linear_norm(layer: nn.Linear) -> float:
    W = layer.weight.detach().to("cpu", torch.float64)
    return float(torch.linalg.matrix_norm(W, ord=2)) * (1 + _SLACK)


def _conv_norm(layer: nn.Conv2d, in_hw: tuple[int, int]) -> float:
    if layer.groups != 1 or layer.dilation != (1, 1):
        raise TypeError(f"cannot bound {layer}: only groups=1, dilation=1 convolutions are supported")
    if not isinstance(layer.padding, tuple) or layer.padding_mode != "zeros":
        raise TypeError(f"cannot bound {layer}: only explicit zero padding is supported")
    W = layer.weight.detach().to("cpu", torch.float64)  # (out, in, kh, kw)
    kh, kw = W.shape[-2:]
    n_h, n_w = in_hw[0] + 2 * layer.padding[0] + kh, in_hw[1] + 2 * layer.padding[1] + kw
    spectrum = torch.fft.fft2(W, s=(n_h, n_w))  # (out, in, n_h, n_w)
    mats = spectrum.permute(2, 3, 0, 1).reshape(n_h * n_w, W.shape[0], W.shape[1])
    return float(torch.linalg.matrix_norm(mats, ord=2).max()) * (1 + _SLACK)


def _pool_factor(layer) -> tuple[int, int]:
    k = layer.kernel_size if isinstance(layer.kernel_size, tuple) else (layer.kernel_size,) * 2
    s = layer.stride if isinstance(layer.stride, tuple) else (layer.stride or layer.kernel_size,) * 2
    s = s if isinstance(s, tuple) else (s, s)
    return k, s


def _layer_bound(layer: nn.Module, in_shape: tuple[int, ...] | None) -> float:
    if isinstance(layer, nn.Linear):
        return _linear_norm(layer)
    if isinstance(layer, nn.Conv2d):
        if in_shape is None:
            raise ValueError(f"input_shape is needed to bound the convolution {layer}")
        return _conv_norm(layer, tuple(in_shape[-2:]))
    if isinstance(layer, _ONE):
        return 1.0
    if isinstance(layer, nn.LeakyReLU):
        return max(1.0, abs(layer.negative_slope))
    if isinstance(layer, nn.Sigmoid):
        return 0.25
    if isinstance(layer, nn.MaxPool2d):
        if layer.dilation not in (1, (1, 1)):
            raise TypeError(f"cannot bound {layer}: dilation is not supported")
        k, s = _pool_factor(layer)
        return math.sqrt(math.ceil(k[0] / s[0]) * math.ceil(k[1] / s[1]))
    if isinstance(layer, nn.AvgPool2d):
        if layer.padding not in (0, (0, 0)):
            raise TypeError(f"cannot bound {layer}: padding is not supported")
        k, s = _pool_factor(layer)
        return math.sqrt(math.ceil(k[0] / s[0]) * math.ceil(k[1] / s[1]) / (k[0] * k[1]))
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if layer.running_var is None:
            raise TypeError(f"cannot bound {layer}: it has no running statistics (track_running_stats=False), "
                            "so it normalises by each batch's own statistics")
        scale = 1.0 / torch.sqrt(layer.running_var.detach().double() + layer.eps)
        if layer.affine:
            scale = scale * layer.weight.detach().double().abs()
        return float(scale.max()) * (1 + _SLACK)
    if isinstance(layer, nn.Sequential):
        raise AssertionError("nested Sequential is flattened by the caller")  # pragma: no cover
    raise TypeError(f"cannot bound the Lipschitz constant of layer {layer!r}; supported: Linear, Conv2d, "
                    "MaxPool2d, AvgPool2d, BatchNorm, ReLU, LeakyReLU, Tanh, Sigmoid, Flatten, Unflatten, "
                    "Dropout, Identity (and nested Sequential)")


def _flatten(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _flatten(child)]
    return [module]


def _body(model: nn.Module) -> tuple[nn.Module, bool]:
    """The un-normalised part of ``model`` and whether an l2 normalisation follows it."""
    if isinstance(model, EmbeddingNet):
        return model.body, isinstance(model.head, L2Normalize)
    layers = _flatten(model)
    if layers and isinstance(layers[-1], L2Normalize):
        return nn.Sequential(*layers[:-1]), True
    return model, False


def layer_bounds(model: nn.Module, *, input_shape: tuple[int, ...] | None = None) -> list[tuple[str, float]]:
    """Per-layer upper bounds on the l2 operator norm of ``model``'s un-normalised body.

    Parameters
    ----------
    model : nn.Module
        An ``EmbeddingNet`` or a (nested) ``nn.Sequential`` of the supported layers,
        optionally ending with ``L2Normalize`` (which is skipped, see the module notes).
    input_shape : tuple of int, default=None
        Shape of one input (without the batch axis); needed when there are convolutions.
        Defaults to ``model.input_shape`` when the model has one.

    Returns
    -------
    list of (str, float)
        The layer's repr and its bound, in order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    body, _ = _body(model)
    layers = _flatten(body)
    for name, t in [*body.named_parameters(), *body.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"model parameter {name!r} holds NaN or infinity: its Lipschitz constant is undefined")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    else:
        input_shape = _check_input_shape(input_shape)
    shapes: list[tuple[int, ...] | None] = [None] * len(layers)
    if input_shape is not None and any(isinstance(la, nn.Conv2d) for la in layers):
        param = next(body.parameters(), None)
        x = torch.zeros((1, *input_shape), dtype=param.dtype if param is not None else torch.float32,
                        device=param.device if param is not None else "cpu")
        if isinstance(model, EmbeddingNet) and hasattr(model, "input_shape"):
            x = x.reshape(1, -1)
        with eval_mode(body):
            try:
                with torch.no_grad():
                    for i, layer in enumerate(layers):
                        shapes[i] = tuple(x.shape[1:])
                        x = layer(x)
            except (RuntimeError, ValueError, IndexError) as exc:
                raise ValueError(f"input_shape {tuple(input_shape)} does not fit the model: layer {i} ({layer}) "
                                 f"fails on inputs of shape {shapes[i]} ({type(exc).__name__}: {exc})") from None
    return [(repr(layer), _layer_bound(layer, shapes[i])) for i, layer in enumerate(layers)]


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (shape is None or isinstance(input_shape, (str, bytes)) or not shape
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in shape)):
        raise ValueError(f"input_shape must be a tuple of positive ints (one input, without the batch axis), "
                         f"got {input_shape!r}")
    return tuple(int(v) for v in shape)


def lipschitz_bound(model: nn.Module, *, input_shape: tuple[int, ...] | None = None) -> float:
    """Upper bound on the l2 Lipschitz constant of ``model``'s un-normalised body.

    The product of :func:`layer_bounds`. For models ending in ``L2Normalize`` the
    normalisation is excluded; :func:`certified_input_radius` accounts for it.

    Examples
    --------
    >>> from robust_metric_learning.deep import MLP
    >>> lipschitz_bound(MLP(4, hidden=(8,), embedding_dim=2)) > 0
    True
    """
    return float(np.prod([b for _, b in layer_bounds(model, input_shape=input_shape)]))


def certified_input_radius(embedding_radius, body_norms, *, lipschitz: float, n_features: int,
                           norm: str = "linf", normalized: bool = True) -> np.ndarray:
    """Input-space radius under which the embedding cannot move by ``embedding_radius``.

    Parameters
    ----------
    embedding_radius : array-like of shape (n,)
        Certified radius of each query in (normalised) embedding space, l2.
    body_norms : array-like of shape (n,)
        ``||body(x)||_2`` of each query (ignored when ``normalized`` is False).
    lipschitz : float
        Upper bound on the body's l2 Lipschitz constant (:func:`lipschitz_bound`).
    n_features : int
        Input dimension d (for the l_inf threat model, ``||delta||_2 <= sqrt(d) ||delta||_inf``).
    norm : {"linf", "l2"}, default="linf"
        Norm of the returned input radius.
    normalized : bool, default=True
        Whether the embedding is ``body(x) / ||body(x)||``. If the body moves by at most
        ``rho < ||u||`` from ``u = body(x)``, the normalised embedding moves by at most
        ``rho / (||u|| - rho)`` (projection onto the ball of radius ``||u|| - rho`` is
        1-Lipschitz), so ``rho = R ||u|| / (1 + R)`` keeps it within R.

    Returns
    -------
    ndarray of shape (n,)
        Certified input radius (0 where the embedding radius is 0 or negative: a query already
        wrong; inf where it is inf).

    Raises
    ------
    ValueError or TypeError
        ``lipschitz`` not a finite number > 0, ``n_features`` not a positive int, NaN in
        ``embedding_radius``, ``body_norms`` missing (when ``normalized``), of another length,
        negative or not finite.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    lipschitz = check_real(lipschitz, name="lipschitz", low=0.0, low_open=True)
    n_features = check_positive_int(n_features, name="n_features")
    R = _as_1d(embedding_radius, name="embedding_radius")
    if np.isnan(R).any():
        raise ValueError(f"embedding_radius contains NaN in {int(np.isnan(R).sum())} of {len(R)} entries")
    R = np.maximum(R, 0.0)
    finite = np.isfinite(R)
    if normalized:
        if body_norms is None:
            raise ValueError("body_norms is needed when normalized=True (the norms ||body(x)||_2 of the queries)")
        u = _as_1d(body_norms, name="body_norms")
        if u.shape != R.shape:
            raise ValueError(f"body_norms must have shape {R.shape} (one per embedding_radius), got {u.shape}")
        if not np.isfinite(u).all() or (u < 0).any():
            raise ValueError(f"body_norms must be finite and >= 0, got values in [{u.min():.6g}, {u.max():.6g}]")
        rho = np.where(finite, R * u / (1.0 + np.where(finite, R, 0.0)), np.inf)
    else:
        rho = R
    factor = math.sqrt(n_features) if norm == "linf" else 1.0
    return rho / (lipschitz * factor)


def _as_1d(values: Any, *, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D array of numbers: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    return arr

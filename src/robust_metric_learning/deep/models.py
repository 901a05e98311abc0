"""Embedding networks: inputs in [0, 1] to L2-normalised embeddings.

Every model here is ``body`` (an ``nn.Sequential`` of layers whose Lipschitz constant
:func:`~robust_metric_learning.deep.lipschitz.lipschitz_bound` can bound) followed by
:class:`L2Normalize`. Any other ``torch.nn.Module`` mapping a batch of inputs to a
``(batch, dim)`` tensor is accepted by the training loop and the attacks as well.
"""

from __future__ import annotations

from numbers import Integral

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .._validation import (
    Interval,
    SequenceOf,
    TupleOf,
    check_bool,
    check_params,
    check_positive_int,
)

__all__ = ["L2Normalize", "EmbeddingNet", "SmallCNN", "MLP", "RC2F2"]


class L2Normalize(nn.Module):
    """Rows scaled to unit l2 norm (rows of norm below ``eps`` are divided by ``eps``)."""

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z / z.norm(dim=1, keepdim=True).clamp_min(self.eps)


class EmbeddingNet(nn.Module):
    """``body`` then, if ``normalize``, :class:`L2Normalize`.

    Parameters
    ----------
    body : nn.Sequential
        The un-normalised network; its output has shape ``(batch, embedding_dim)``.
    normalize : bool, default=True
        Whether embeddings are scaled to unit l2 norm.
    spectral_norm : bool, default=False
        Reparametrise every ``Linear``/``Conv2d`` weight by its spectral norm
        (``torch.nn.utils.parametrizations.spectral_norm``), which keeps the network's
        Lipschitz constant, and so its certified radii, under control.

    Notes
    -----
    2-d convolution weights are stored channels-last (``torch.channels_last``), so the feature maps
    are too: on a CPU, max-pooling a channels-first map can cost more than the convolutions, and
    a SmallCNN's forward and backward pass runs 1.2 to 1.7 times faster this way (RC2F2's about
    as fast; ``benchmarks/bench_layout.py``). The values are the same up to rounding;
    ``load_state_dict`` and ``.to(device)`` keep the layout.
    """

    def __init__(self, body: nn.Sequential, *, normalize: bool = True, spectral_norm: bool = False):
        super().__init__()
        normalize = check_bool(normalize, name="normalize")
        if check_bool(spectral_norm, name="spectral_norm"):
            for i, layer in enumerate(body):
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    body[i] = _spectral_norm(layer)
        self.body = body
        self.head = L2Normalize() if normalize else nn.Identity()
        for module in self.modules():  # see Notes; other layers (Conv3d, ...) keep their layout
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _dims(embedding_dim, name: str = "embedding_dim") -> int:
    return check_positive_int(embedding_dim, name=name)


#: layer widths: MLP's ``hidden`` (any number of layers, none included) and SmallCNN's ``channels``
_WIDTHS = {"hidden": [SequenceOf(Interval(Integral, 1, None), allow_empty=True)],
           "channels": [TupleOf(Interval(Integral, 1, None), Interval(Integral, 1, None))]}


def _check_widths(owner: str, **widths) -> None:
    """Check layer widths declared in :data:`_WIDTHS` (the error names the parameter and ``owner``)."""
    check_params(owner, widths, {k: _WIDTHS[k] for k in widths})


class SmallCNN(EmbeddingNet):
    """Two 3x3 conv blocks (ReLU, 2x2 max-pool) and a hidden layer, for ``(batch, 1, 28, 28)``
    images (flat ``(batch, 784)`` rows are reshaped).

    Parameters
    ----------
    embedding_dim : int, default=64
    channels : tuple of two int, default=(32, 64)
        Channels of the two conv blocks.
    hidden : int, default=128
        Width of the hidden fully connected layer.
    in_channels : int, default=1
    image_size : int, default=28
        Height and width of the images (a multiple of 4).
    normalize, spectral_norm : bool
        See :class:`EmbeddingNet`.

    Examples
    --------
    >>> import torch
    >>> SmallCNN(embedding_dim=16)(torch.rand(2, 784)).shape
    torch.Size([2, 16])
    """

    def __init__(self, embedding_dim: int = 64, *, channels: tuple[int, int] = (32, 64), hidden: int = 128,
                 in_channels: int = 1, image_size: int = 28, normalize: bool = True, spectral_norm: bool = False):
        dim = _dims(embedding_dim)
        _check_widths("SmallCNN", channels=channels)
        c1, c2 = (int(v) for v in channels)
        h = check_positive_int(hidden, name="hidden")
        c = check_positive_int(in_channels, name="in_channels")
        size = check_positive_int(image_size, name="image_size")
        if size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {size}")
        body = nn.Sequential(
            nn.Unflatten(1, (c, size, size)),
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (size // 4) ** 2, h), nn.ReLU(),
            nn.Linear(h, dim),
        )
        super().__init__(body, normalize=normalize, spectral_norm=spectral_norm)
        self.input_shape = (c, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(x.shape[0], -1))


class RC2F2(EmbeddingNet):
    """The 28x28 network of the ranking-attack literature (RobRank's ``rc2f2``): 5x5 convs of 32
    and 64 channels (padding 2, ReLU, 2x2 max-pool each), a hidden layer of 1024 and a 512-d
    embedding, L2-normalised (the distance of its "N" metric); flat ``(batch, 784)`` rows are
    reshaped.

    Parameters
    ----------
    embedding_dim : int, default=512
    in_channels : int, default=1
    normalize, spectral_norm : bool
        See :class:`EmbeddingNet`.

    Examples
    --------
    >>> import torch
    >>> RC2F2()(torch.rand(2, 784)).shape
    torch.Size([2, 512])
    """

    def __init__(self, embedding_dim: int = 512, *, in_channels: int = 1, normalize: bool = True,
                 spectral_norm: bool = False):
        c = check_positive_int(in_channels, name="in_channels")
        body = nn.Sequential(
            nn.Unflatten(1, (c, 28, 28)),
            nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 1024), nn.ReLU(),
            nn.Linear(1024, _dims(embedding_dim)),
        )
        super().__init__(body, normalize=normalize, spectral_norm=spectral_norm)
        self.input_shape = (c, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(x.shape[0], -1))


class MLP(EmbeddingNet):
    """Fully connected ReLU network on flat inputs.

    Parameters
    ----------
    in_features : int
    hidden : sequence of int, default=(256,)
        Widths of the hidden layers, one positive int per layer (``()``: none); a bare int
        is refused (write ``(8,)`` for one layer of 8).
    embedding_dim : int, default=64
    normalize, spectral_norm : bool
        See :class:`EmbeddingNet`.
    """

    def __init__(self, in_features: int, *, hidden: tuple[int, ...] = (256,), embedding_dim: int = 64,
                 normalize: bool = True, spectral_norm: bool = False):
        sizes = [check_positive_int(in_features, name="in_features")]
        _check_widths("MLP", hidden=hidden)
        sizes += [int(h) for h in hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], _dims(embedding_dim)))
        super().__init__(nn.Sequential(*layers), normalize=normalize, spectral_norm=spectral_norm)

"""Starting transformations ``L0`` (metric-learn's ``init`` convention) and ``n_components``."""

from __future__ import annotations

import numpy as np

__all__ = ["INIT_OPTIONS", "initial_components", "resolve_n_components"]

#: the named starting points every learner with an ``init`` parameter takes
INIT_OPTIONS = ("auto", "identity", "pca", "lda", "random")


def resolve_n_components(n_components: int | None, n_features: int, *, owner: str) -> int:
    """The output dimension: ``n_features`` for None, else ``n_components`` (at most ``n_features``)."""
    if n_components is None:
        return n_features
    if n_components > n_features:
        raise ValueError(f"The 'n_components' parameter of {owner} must be at most the number of features "
                         f"of X ({n_features}); got {n_components}")
    return int(n_components)


def _auto(r: int, n_samples: int, n_features: int, n_classes: int) -> str:
    """'auto': LDA when ``r`` discriminant directions exist, else PCA when it reduces, else identity."""
    if r <= min(n_features, n_classes - 1):
        return "lda"
    if r < min(n_features, n_samples):
        return "pca"
    return "identity"


def initial_components(init, X: np.ndarray, codes: np.ndarray, n_components: int | None,
                       rng: np.random.Generator, *, owner: str) -> np.ndarray:
    """``L0`` of shape ``(r, n_features)`` for ``init``.

    ``"identity"`` is ``I`` (its first ``r`` rows), ``"random"`` standard normal entries,
    ``"pca"`` the ``r`` leading principal directions, ``"lda"`` the leading discriminant
    directions (at most ``n_classes - 1``; zero rows after those), ``"auto"`` is ``"lda"`` when
    ``r <= min(n_features, n_classes - 1)``, else ``"pca"`` when ``r < min(n_features,
    n_samples)``, else ``"identity"`` (so identity whenever ``n_components`` is None and
    ``n_features >= n_classes``). An array is ``L0`` itself: ``n_features`` columns, at most
    ``n_features`` rows, and ``n_components`` rows when that is given.
    """
    n_samples, d = X.shape
    if not isinstance(init, str):
        L0 = np.array(init, dtype=np.float64)
        if L0.ndim != 2 or L0.shape[1] != d or L0.shape[0] > d or L0.shape[0] < 1:
            raise ValueError(f"The 'init' parameter of {owner} must be an array of shape (n_components, {d}) with "
                             f"1 <= n_components <= {d} for X with {d} features; got shape {L0.shape}")
        if n_components is not None and L0.shape[0] != n_components:
            raise ValueError(f"The 'init' parameter of {owner} has {L0.shape[0]} rows but n_components is "
                             f"{n_components}; they must agree")
        if not np.isfinite(L0).all():
            raise ValueError(f"The 'init' parameter of {owner} contains NaN or infinity")
        return L0
    r = resolve_n_components(n_components, d, owner=owner)
    n_classes = int(np.unique(codes).size)
    if init == "auto":
        init = _auto(r, n_samples, d, n_classes)
    if init == "identity":
        return np.eye(r, d)
    if init == "random":
        return rng.standard_normal((r, d))
    if init == "pca":
        from sklearn.decomposition import PCA

        if r > min(n_samples, d):
            raise ValueError(f"init='pca' of {owner} needs n_components <= min(n_samples, n_features) = "
                             f"{min(n_samples, d)}; got {r}")
        return PCA(n_components=r, random_state=int(rng.integers(2**31 - 1))).fit(X).components_
    # "lda"
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    if n_classes < 2:
        raise ValueError(f"init='lda' of {owner} needs at least 2 classes in y; got {n_classes}")
    m = min(r, d, n_classes - 1)
    lda = LinearDiscriminantAnalysis(n_components=m).fit(X, codes)
    S = lda.scalings_.T[:m]  # fewer rows when the data have fewer discriminant directions
    L0 = np.zeros((r, d))
    L0[: S.shape[0]] = S
    return L0

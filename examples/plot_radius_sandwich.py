"""
Certified, exact and empirical radii of 1-NN
============================================

Three numbers describe how far a test point is from being misclassified by a nearest-neighbour
classifier, and they always come in the same order:

    certified radius ≤ exact radius ≤ empirical radius

* the **certified** radius (:func:`~robust_metric_learning.certified_radius_knn`) is a cheap
  lower bound, valid for any K;
* the **exact** radius (:func:`~robust_metric_learning.exact_radius_1nn`) is the length of the
  shortest perturbation that changes the 1-NN prediction, found by solving one small quadratic
  program per other-class training point;
* an **empirical** radius is the length of a perturbation an attack actually found
  (:func:`~robust_metric_learning.attack_knn`), so it can only be an upper bound.

This example computes all three for every test point of two bundled datasets and plots them
against each other, to show how tight the cheap bound is and how far a black-box attack is from
the optimum.
"""

# %%
# Radii on two datasets
# ---------------------
# The empirical radii come from the decision-based
# :class:`~robust_metric_learning.attacks.BoundaryAttack` (it only queries predictions), run
# with 2000 steps instead of its default 25000 to keep the example fast. For K = 1 the default
# ``"structural"`` attack is exact: we check that it agrees with ``exact_radius_1nn``.
import matplotlib.pyplot as plt
import numpy as np

from robust_metric_learning import (
    attack_knn,
    certified_radius_knn,
    exact_radius_1nn,
    robust_error_curve,
)
from robust_metric_learning.attacks import BoundaryAttack
from robust_metric_learning.datasets import load_dataset

results = {}
for name in ("wine", "breast_cancer"):
    X_train, y_train, X_test, y_test = load_dataset(name)
    certified = certified_radius_knn(X_train, y_train, X_test, y_test, n_neighbors=1)
    exact = exact_radius_1nn(X_train, y_train, X_test, y_test)
    boundary = attack_knn(X_train, y_train, X_test, y_test,
                          method=BoundaryAttack(steps=2000, random_state=0)).radii
    structural = attack_knn(X_train, y_train, X_test, y_test, method="structural").radii
    results[name] = certified, exact, boundary

    correct = exact > 0
    print(f"{name}: {len(X_test)} test points, {np.sum(~correct)} misclassified (radius 0)")
    print(f"  certified <= exact on every point: {bool(np.all(certified <= exact + 1e-9))}")
    print(f"  exact <= boundary on every point:  {bool(np.all(exact <= boundary + 1e-9))}")
    print(f"  boundary attack failed on {np.sum(np.isinf(boundary))} points")
    print(f"  largest |structural - exact|: {np.max(np.abs(structural - exact)):.1e}")
    print(f"  median certified / exact: {np.median(certified[correct] / exact[correct]):.3f}")
    print(f"  median boundary / exact:  {np.median(boundary[correct] / exact[correct]):.3f}")

# %%
# The sandwich, point by point
# ----------------------------
# Each correctly classified test point gives two markers at the same x (its exact radius): its
# certified radius (below the diagonal) and the Boundary attack's radius (above it). Points the
# classifier already gets wrong have all three radii 0 and are left out.
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for ax, (name, (certified, exact, boundary)) in zip(axes, results.items()):
    keep = exact > 0
    top = max(exact[keep].max(), boundary[keep][np.isfinite(boundary[keep])].max())
    ax.plot([0, top], [0, top], color="gray", lw=1, label="y = x (exact)")
    ax.scatter(exact[keep], boundary[keep], s=14, marker="^", color="tab:red",
               label="empirical (Boundary attack)")
    ax.scatter(exact[keep], certified[keep], s=14, marker="v", color="tab:blue",
               label="certified lower bound")
    ax.set_xlabel("exact 1-NN radius (ℓ2)")
    ax.set_ylabel("radius (ℓ2)")
    ax.set_title(name)
    ax.legend(loc="upper left", fontsize=8)
fig.suptitle("certified ≤ exact ≤ empirical, for every test point")
fig.tight_layout()
plt.show()

# %%
# Every blue marker lies on or below the diagonal and every red one on or above it, as the
# printed checks confirm. The medians printed above say how close each is: the certified bound
# costs a fraction of the exact computation and for 1-NN is often close to the exact radius,
# while the black-box attack with its shortened schedule overestimates the radius.
#
# Robust error curves
# -------------------
# The same radii as robust error against ε: the certified curve is an upper bound of the true
# robust error, the attack's a lower bound, and the exact one lies between them.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for ax, (name, (certified, exact, boundary)) in zip(axes, results.items()):
    eps = np.linspace(0, np.quantile(exact, 0.95), 40)
    for radii, label, style in ((certified, "certified", "--"), (exact, "exact", "-"),
                                (boundary, "Boundary attack", ":")):
        ax.plot(eps, robust_error_curve(radii, eps), style, label=label)
    ax.set_xlabel("ε (ℓ2)")
    ax.set_title(name)
    ax.legend()
axes[0].set_ylabel("robust error")
fig.suptitle("1-NN robust error from the three radii")
fig.tight_layout()
plt.show()

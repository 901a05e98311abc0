"""
Attacking K-NN classifiers
==========================

For K > 1 the exact minimal adversarial perturbation of a K-NN classifier is a hard
combinatorial problem, so robustness is bracketed from two sides:

* a **certified** radius (:func:`~robust_metric_learning.certified_radius_knn`) below which
  no perturbation can change the vote;
* an **empirical** radius, the length of a perturbation that an attack found and that
  :meth:`~robust_metric_learning.MahalanobisKNN.predict` confirms flips the prediction.

The true minimal radius of every point lies between the two. This example attacks K-NN on the
digits for several K with the :class:`~robust_metric_learning.attacks.StructuralAttack`
(it chooses which other-class training points to pull into the neighbourhood and solves a
small quadratic program for each choice), looks at the distributions of the radii and at the
gap between the bounds, and compares the attack with random noise of the same size.
"""

# %%
# Radii for K = 1, 3, 5 and 11
# ----------------------------
# 150 test images, drawn at random, keep the example fast. For K = 1 the structural attack is
# exact, so the two bounds should meet there.
import matplotlib.pyplot as plt
import numpy as np

from robust_metric_learning import (
    MahalanobisKNN,
    certified_radius_knn,
    robust_error_curve,
)
from robust_metric_learning.attacks import NoiseAttack, StructuralAttack
from robust_metric_learning.datasets import load_dataset

X_train, y_train, X_test, y_test = load_dataset("digits")
subset = np.random.default_rng(0).permutation(len(X_test))[:150]
X, y = X_test[subset], y_test[subset]

ks = [1, 3, 5, 11]
certified, empirical = {}, {}
for k in ks:
    knn = MahalanobisKNN(n_neighbors=k).fit(X_train, y_train)
    certified[k] = certified_radius_knn(X_train, y_train, X, y, n_neighbors=k)
    result = StructuralAttack(random_state=0)(knn, X, y)
    empirical[k] = result.radii
    ok = np.isfinite(result.radii)
    print(f"K = {k:2d}: clean error {np.mean(result.radii == 0):.3f}, attack succeeded on "
          f"{ok.mean():.0%} of points, certified <= empirical everywhere: "
          f"{bool(np.all(certified[k] <= empirical[k] + 1e-9))}")

# %%
# ``result`` unpacks like a foolbox attack's ``(raw, clipped, success)`` plus the radii: the
# adversarial images are in ``result.raw``, and ``result.success`` says whether each one is
# misclassified by the classifier's own ``predict``.
#
# Distributions of the radii
# --------------------------
# Box plots of the certified and empirical radii of the correctly classified points, per K.
fig, ax = plt.subplots(figsize=(8, 4.2))
positions = np.arange(len(ks)) * 3.0
for offset, radii, color, label in ((-0.5, certified, "tab:blue", "certified (lower bound)"),
                                    (0.5, empirical, "tab:red", "structural attack (upper bound)")):
    data = [radii[k][(empirical[k] > 0) & np.isfinite(empirical[k])] for k in ks]
    parts = ax.boxplot(data, positions=positions + offset, widths=0.8, patch_artist=True,
                       showfliers=False)
    for box in parts["boxes"]:
        box.set_facecolor(color)
        box.set_alpha(0.5)
    ax.plot([], [], color=color, lw=8, alpha=0.5, label=label)
ax.set_xticks(positions, [f"K = {k}" for k in ks])
ax.set_ylabel("radius (ℓ2, pixels in [0, 1])")
ax.set_title("Digits: radii of the correctly classified test points")
ax.set_ylim(bottom=0, top=1.25 * ax.get_ylim()[1])  # room for the legend above the whiskers
ax.legend(loc="upper center", ncol=2)
fig.tight_layout()
plt.show()

for k in ks:
    keep = (empirical[k] > 0) & np.isfinite(empirical[k])
    print(f"K = {k:2d}: median certified {np.median(certified[k][keep]):.3f}, "
          f"median empirical {np.median(empirical[k][keep]):.3f}")

# %%
# The printed medians follow the boxes. At K = 1 the attack is exact, so the red box is the
# distribution of the true radii and the space between the boxes is the looseness of the
# certified bound alone. For K > 1 the attack needs longer perturbations than for K = 1 (a vote
# of several neighbours has to be overturned), while the certified bound does not grow with
# them: it takes the worst case over which neighbours an attacker could move, and becomes
# looser as K grows.
#
# Where the true robust error lies
# --------------------------------
# As curves: the certified robust error is an upper bound, the attack's a lower bound, and the
# shaded band between them contains the true robust error.
eps = np.linspace(0, 1.2, 61)
fig, ax = plt.subplots(figsize=(8, 4.2))
for k in ks:
    upper = robust_error_curve(certified[k], eps)
    lower = robust_error_curve(empirical[k], eps)
    line, = ax.plot(eps, lower, label=f"K = {k}")
    ax.plot(eps, upper, "--", color=line.get_color())
    ax.fill_between(eps, lower, upper, color=line.get_color(), alpha=0.15)
ax.set_xlabel("ε (ℓ2)")
ax.set_ylabel("robust error")
ax.set_title("Robust error bracket: attack (solid) ≤ true ≤ certified (dashed)")
ax.legend()
fig.tight_layout()
plt.show()

gap = {k: np.max(robust_error_curve(certified[k], eps) - robust_error_curve(empirical[k], eps))
       for k in ks}
print("widest gap between certified and empirical robust error:",
      ", ".join(f"K = {k}: {g:.3f}" for k, g in gap.items()))

# %%
# For K = 1 the band is only the looseness of the certified bound; the printed widest gaps show
# how much it widens for K > 1, where the attack is not exact either. Tighter bounds or
# stronger attacks narrow the band from either side.
#
# Random noise is not an attack
# -----------------------------
# :class:`~robust_metric_learning.attacks.NoiseAttack` draws random directions of a given ℓ2
# norm (10 per point and norm). A point counts as broken if any draw changes its 11-NN
# prediction. Random directions are almost never the worst case, so noise of the same size
# breaks far fewer points than the structural attack.
knn11 = MahalanobisKNN(n_neighbors=11).fit(X_train, y_train)
noise_eps = [0.25, 0.5, 1.0, 1.5, 2.0]
noise = NoiseAttack(random_state=0)(knn11, X, y, eps=noise_eps)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(noise_eps, noise.success.mean(axis=1), "o-", label="Gaussian noise (any of 10 draws)")
ax.plot(noise_eps, robust_error_curve(empirical[11], noise_eps), "s-", label="structural attack")
ax.plot(noise_eps, robust_error_curve(certified[11], noise_eps), "^--", label="certified bound")
ax.set_xlabel("ℓ2 norm of the perturbation")
ax.set_ylabel("fraction of points misclassified")
ax.set_title("11-NN on digits: random noise against the attack")
ax.legend()
fig.tight_layout()
plt.show()

attacked = robust_error_curve(empirical[11], noise_eps)
for e, broken, acc, att in zip(noise_eps, noise.success.mean(axis=1), noise.accuracy, attacked):
    print(f"norm {e}: noise breaks {broken:.3f} of points (accuracy over all draws {acc:.3f}), "
          f"the structural attack {att:.3f}")

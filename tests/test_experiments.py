"""The experiment runner: verified cache, resumption, reports, soundness checks."""

import json

import numpy as np
import pytest

from robust_metric_learning.cli import main
from robust_metric_learning.experiments import ResultCache, fingerprint, reproduce


def test_cache_roundtrip_and_rejections(tmp_path):
    cache = ResultCache(tmp_path)
    key, fp = ("arml", "digits", "ARML", "seed0"), fingerprint({"a": 1})
    assert cache.load(key, fp) is None
    cache.store(key, fp, {"radii": [0.5, float("inf")]})
    assert cache.load(key, fp) == {"radii": [0.5, float("inf")]}
    assert cache.load(key, fingerprint({"a": 2})) is None  # other settings: stale
    path = cache.path(key)
    text = path.read_text()
    path.write_text(text.replace("0.5", "0.25"))  # edited payload
    with pytest.warns(RuntimeWarning, match="checksum"):
        assert cache.load(key, fp) is None
    path.write_text(text[: len(text) // 2])  # interrupted write of an older tool
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert cache.load(key, fp) is None


def test_reproduce_resumes_and_recomputes_only_what_is_missing(tmp_path, monkeypatch):
    calls = []
    from robust_metric_learning.experiments import arml

    real = arml.run_task

    def counting(dataset, method, seed, data, n_jobs):
        calls.append(method)
        return real(dataset, method, seed, data, n_jobs)

    monkeypatch.setattr(arml, "run_task", counting)
    kw = dict(datasets=["digits"], methods=["Euclidean", "LFDA"], n_eval=25, verbose=False)
    summary = reproduce("arml", tmp_path, **kw)
    assert calls == ["Euclidean", "LFDA"]
    for name in ("report.md", "results.json", "digits_radius_1nn_exact.png", "digits_radius_knn_empirical.png"):
        assert (tmp_path / name).stat().st_size > 0
    curves = summary["datasets"]["digits"]["methods"]["Euclidean"]["curves"]
    # certified <= exact for K = 1 curves' ordering: robust error (certified) >= (empirical)
    assert np.all(np.array(curves["radius_knn_certified"]) >= np.array(curves["radius_knn_empirical"]) - 1e-12)
    assert reproduce("arml", tmp_path, **kw) == json.loads((tmp_path / "results.json").read_text())
    assert calls == ["Euclidean", "LFDA"]  # all cached
    path = ResultCache(tmp_path / "cache").path(("arml", "digits", "LFDA", "seed0"))
    path.write_text(path.read_text()[:100])  # corrupt one entry
    with pytest.warns(RuntimeWarning, match="unreadable"):
        reproduce("arml", tmp_path, **kw)
    assert calls == ["Euclidean", "LFDA", "LFDA"]


@pytest.fixture
def tiny_digits_protocol(monkeypatch):
    """digits under a toy per-dataset protocol: subsample, default n_eval, changed learners."""
    from robust_metric_learning.experiments import arml

    proto = {"n_train": 300, "n_eval": 15, "learners": {"ARML": {"max_iter": 3, "learn_rate": 1e-2}},
             "fit_n_train": {"ARML": 120}}
    monkeypatch.setattr(arml, "DATASET_SETTINGS", {"digits": proto})
    return proto


def test_dataset_settings_subsample_learners_and_fingerprint(tmp_path, monkeypatch, tiny_digits_protocol):
    from robust_metric_learning.datasets import load_dataset
    from robust_metric_learning.experiments import arml

    seen = []
    real = arml.run_task

    def spying(dataset, method, seed, data, n_jobs):
        seen.append((method, data))
        return real(dataset, method, seed, data, n_jobs)

    monkeypatch.setattr(arml, "run_task", spying)
    # the published protocol elsewhere, and unknown methods are refused by name
    assert arml.dataset_settings("pendigits") == {"n_train": None, "n_eval": 1000, "learners": {}, "fit_n_train": {}}
    assert arml.make_learner("ARML", "pendigits", 0).get_params() == arml.METHODS["ARML"](0).get_params()
    with pytest.raises(ValueError, match="method must be one of"):
        arml.make_learner("SVM", "digits", 0)
    kw = dict(datasets=["digits"], methods=["Euclidean", "ARML"], verbose=False)
    summary = reproduce("arml", tmp_path, **kw)
    X_full, y_full, X_te, y_te = load_dataset("digits")
    (_, (X_tr, y_tr, X_ev, y_ev)), _ = seen
    # a stratified subsample of the training rows, in their order; the dataset's default n_eval
    assert X_tr.shape == (300, X_full.shape[1]) and len(X_ev) == 15
    rows = [int(np.flatnonzero((X_full == x).all(1) & (y_full == c))[0]) for x, c in zip(X_tr, y_tr)]
    assert rows == sorted(rows) and len(set(rows)) == 300
    full_share = np.bincount(y_full) / len(y_full)
    assert np.all(np.abs(np.bincount(y_tr, minlength=full_share.size) - 300 * full_share) <= 1)
    block = summary["datasets"]["digits"]
    assert block["methods"]["ARML"]["n_train"] == 300 and block["methods"]["ARML"]["n_fit"] == 120
    assert block["methods"]["Euclidean"]["n_fit"] == 300 and block["methods"]["ARML"]["n_eval"] == 15
    assert block["protocol"]["learners"] == {"ARML": {"max_iter": 3, "learn_rate": 1e-2}}
    report = (tmp_path / "report.md").read_text()
    assert "stratified subsample of 300 points of 1257" in report
    assert "ARML settings changed from the published defaults: max_iter=3, learn_rate=0.01" in report
    assert "ARML is fitted on a stratified subsample of 120" in report
    # the K = 11 gap table: certified minus empirical robust error, in points, never negative
    gap = block["certified_minus_empirical"]["ARML"]
    curves = block["methods"]["ARML"]["curves"]
    np.testing.assert_allclose(gap, np.subtract(curves["radius_knn_certified"], curves["radius_knn_empirical"]),
                               atol=1e-4)
    assert min(gap) >= 0
    assert "| ARML | " + " | ".join(f"{100 * v:.1f}" for v in gap) + " |" in report
    vs = block["arml_vs_best"]["radius_knn_certified"]
    assert [r["best_other"] for r in vs] == ["Euclidean"] * len(vs) and len(vs) == len(block["eps"])
    assert "| 0.1 | Euclidean " in report
    cache = ResultCache(tmp_path / "cache")
    entry = json.loads(cache.path(("arml", "digits", "ARML", "seed0")).read_text())
    assert entry["payload"]["n_iter"] == 3  # the changed max_iter was used
    # a rerun reuses everything; a changed setting of one learner recomputes that learner only,
    # a changed subsample every learner
    reproduce("arml", tmp_path, **kw)
    assert len(seen) == 2
    tiny_digits_protocol["learners"]["ARML"]["max_iter"] = 4
    reproduce("arml", tmp_path, **kw)
    assert [m for m, _ in seen[2:]] == ["ARML"]
    tiny_digits_protocol["n_train"] = 280
    reproduce("arml", tmp_path, **kw)
    assert [m for m, _ in seen[3:]] == ["Euclidean", "ARML"]
    # an explicit n_eval overrides the dataset's default
    reproduce("arml", tmp_path, n_eval=10, **kw)
    assert [len(d[2]) for _, d in seen[5:]] == [10, 10]


def test_paired_against_best_counts_discordant_points_and_mcnemar_p():
    from robust_metric_learning.experiments import arml as arml_plugin

    # two seeds of 5 points each; at eps 0.5 ARML is wrong on 5 points, A on 2, B on 4
    arml = {0: {"r": [0.1, 0.2, 0.3, 0.4, 1.0]}, 1: {"r": [0.45, 1.0, 1.0, 1.0, 1.0]}}
    a = {0: {"r": [1.0, 1.0, 1.0, 0.2, 0.3]}, 1: {"r": [1.0, 1.0, 1.0, 1.0, 1.0]}}
    b = {0: {"r": [0.1, 0.1, 0.1, 0.1, 1.0]}, 1: {"r": [1.0, 1.0, 1.0, 1.0, 1.0]}}
    (row,) = arml_plugin.paired_against_best({"ARML": arml, "A": a, "B": b}, "r", [0.5])
    assert row["best_other"] == "A" and row["error"] == 0.5 and row["best_other_error"] == 0.2
    # ARML alone wrong on 4 points (seed 0: 0, 1, 2; seed 1: 0), A alone on 1 (seed 0: 4)
    assert (row["only_target_wrong"], row["only_other_wrong"]) == (4, 1)
    assert row["p_value"] == pytest.approx(2 * (1 + 5) / 2 ** 5)  # two-sided binomial, n = 5, k = 1
    (tied,) = arml_plugin.paired_against_best({"ARML": arml, "A": arml}, "r", [0.0])
    assert tied["p_value"] == 1.0 and tied["only_target_wrong"] == tied["only_other_wrong"] == 0


def test_soundness_violation_fails_loudly():
    from robust_metric_learning.experiments.checks import check_certified_unbroken, check_radii

    with pytest.raises(RuntimeError, match="soundness violated in x: certified > empirical on 1 point"):
        check_radii("x", np.array([0.1, 0.3]), np.array([0.2, 0.25]), "certified > empirical")
    check_radii("x", np.array([0.1, np.inf]), np.array([0.1, np.inf]), "ok")
    check_radii("x", np.array([0.1 * (1 + 1e-7)]), np.array([0.1]), "within the relative slack")
    radii = np.array([0.0, 0.05, 0.2])
    check_certified_unbroken("m", radii, [0.01, 0.1], [np.array([1, 0, 0], bool), np.array([1, 1, 0], bool)])
    with pytest.raises(RuntimeError, match="soundness violated in m: 1 queries certified at eps=0.1"):
        check_certified_unbroken("m", radii, [0.01, 0.1], [np.zeros(3, bool), np.array([0, 0, 1], bool)])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="experiment must be one of"):
        reproduce("nope", tmp_path)
    with pytest.raises(ValueError, match="n_eval must be >= 1"):
        reproduce("arml", tmp_path, n_eval=0)
    with pytest.raises(ValueError, match="n_eval must be >= 1"):
        reproduce("arml", tmp_path, n_eval=2.5)
    with pytest.raises(ValueError, match="methods must be among"):
        reproduce("arml", tmp_path, methods=["SVM"])
    assert main(["reproduce", "arml", "--methods", "SVM", "--out", str(tmp_path)]) == 2


# -- rml reproduce lmnn-pl ---------------------------------------------------------------------


@pytest.fixture
def tiny_lmnn_pl(monkeypatch):
    """The lmnn-pl protocol at toy size: one mu, lambda in {0, 1}, short fits, one noise norm."""
    from robust_metric_learning.experiments import lmnn_pl

    monkeypatch.setattr(lmnn_pl, "GRID", {"mu": [0.3], "lam": [0.0, 1.0], "tau": [0.2]})
    monkeypatch.setattr(lmnn_pl, "LEARNER", {**lmnn_pl.LEARNER, "max_iter": 15})
    monkeypatch.setattr(lmnn_pl, "NOISE_EPS", [0.5])
    monkeypatch.setattr(lmnn_pl, "NOISE_DRAWS", 2)
    return lmnn_pl


def test_lmnn_pl_resumes_recomputes_corrupt_entries_and_reports(tmp_path, monkeypatch, tiny_lmnn_pl):
    calls = []
    real = tiny_lmnn_pl.run_split

    def counting(X, y, seed, method, **kw):
        calls.append((method, seed))
        return real(X, y, seed, method, **kw)

    monkeypatch.setattr(tiny_lmnn_pl, "run_split", counting)
    kw = dict(datasets=["iris"], seeds=[0, 1], verbose=False)
    summary = reproduce("lmnn-pl", tmp_path, **kw)
    assert sorted(calls) == sorted((m, s) for m in ("Euclidean", "LMNN", "LMNN-PL") for s in (0, 1))
    for name in ("report.md", "results.json", "iris_noise_accuracy.png", "iris_radius_1nn_exact.png"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "| LMNN-PL |" in report and "LMNN-PL (ties at random)" in report and "acc, noise 0.5" in report
    block = summary["datasets"]["iris"]
    for m in ("Euclidean", "LMNN", "LMNN-PL"):
        s = block["methods"][m]
        assert s["n_splits"] == 2 and 0.5 < s["acc3_mean"] <= 1 and s["median_radius"] >= 0
        assert len(s["noise_acc3"]) == 1 and 0 <= s["noise_acc3"][0] <= 1
    assert set(block["methods"]["LMNN-PL"]["chosen"]["lam"]) <= {"0", "1"}
    assert block["paired"]["seeds"] == [0, 1]
    # every finished task is cached: a rerun computes nothing and gives the same summary
    assert reproduce("lmnn-pl", tmp_path, **kw) == json.loads((tmp_path / "results.json").read_text())
    assert len(calls) == 6
    # a truncated entry is detected and recomputed, the others reused
    path = ResultCache(tmp_path / "cache").path(("lmnn-pl", "iris", "LMNN-PL", "seed1"))
    path.write_text(path.read_text()[:200])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        reproduce("lmnn-pl", tmp_path, **kw)
    assert calls[6:] == [("LMNN-PL", 1)]
    # another protocol (here: another grid) invalidates the entries instead of reusing them
    monkeypatch.setattr(tiny_lmnn_pl, "GRID", {"mu": [0.5], "lam": [0.0], "tau": [0.2]})
    reproduce("lmnn-pl", tmp_path, datasets=["iris"], seeds=[0], methods=["Euclidean"], verbose=False)
    assert calls[7:] == [("Euclidean", 0)]


def test_lmnn_pl_split_payload(tiny_lmnn_pl):
    X, y = tiny_lmnn_pl.load_all("iris")
    out = tiny_lmnn_pl.run_split(X, y, 3, "LMNN-PL")
    assert out["n_train"] + out["n_test"] == 150 and out["n_test"] == 45
    assert len(out["cv"]) == 2 and {c["lam"] for c in out["cv"]} == {0.0, 1.0}  # the full (toy) grid
    assert out["params"] in [{k: c[k] for k in ("mu", "lam", "tau", "lr")} for c in out["cv"]]
    radii = np.array(out["radii"])
    correct = np.array(out["correct1"], dtype=bool)
    assert radii.shape == (45,) and np.all(radii[~correct] == 0) and np.all(radii[correct] > 0)
    assert out["acc1"] == correct.mean() and out["median_radius"] == np.median(radii)
    assert set(out["ties_at_random"]) >= {"params", "acc3", "radii"}


def test_lmnn_pl_search_space_and_selection():
    from robust_metric_learning.experiments import lmnn_pl

    def candidates(method):
        from sklearn.model_selection import ParameterGrid

        return [{k.split("__")[-1]: v for k, v in p.items()} for p in ParameterGrid(lmnn_pl.search_space(method))]

    lmnn, pl = candidates("LMNN"), candidates("LMNN-PL")
    assert all(c in pl for c in lmnn)  # lambda = 0: LMNN-PL's search space contains LMNN's
    n_grid = len(lmnn_pl.GRID["mu"]) * (1 + (len(lmnn_pl.GRID["lam"]) - 1) * len(lmnn_pl.GRID["tau"]))
    assert len(pl) == n_grid
    assert all(c["learn_rate"] == lmnn_pl.BASE_LR / max(1, c["weight"] * c["tau"]) for c in pl if "tau" in c)
    # selection: best accuracy (to 1e-9), then the larger validation radius, then the first drawn
    res = {"mean_test_accuracy": np.array([0.9, 0.95, 0.95 - 1e-12, 0.95, 0.8]),
           "mean_test_radius": np.array([0.9, 0.20, 0.30, 0.30, 0.9])}
    assert lmnn_pl.first_best(res) == 1
    assert lmnn_pl.select(res) == 2


def test_lmnn_pl_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_eval is for the 'arml' experiment"):
        reproduce("lmnn-pl", tmp_path, n_eval=10)
    with pytest.raises(ValueError, match=r"methods must be among \['Euclidean', 'LMNN', 'LMNN-PL'\]"):
        reproduce("lmnn-pl", tmp_path, methods=["ARML"])
    with pytest.raises(ValueError, match=r"seeds must be an integer seed in \[0, 2\*\*32 - 1\], got -1"):
        reproduce("lmnn-pl", tmp_path, seeds=[-1])
    assert main(["reproduce", "lmnn-pl", "--methods", "NCA", "--out", str(tmp_path)]) == 2


def test_seeds_and_n_jobs_are_checked_before_any_task(tmp_path):
    with pytest.raises(ValueError, match=r"seeds must be an integer seed in \[0, 2\*\*32 - 1\]"):
        reproduce("lmnn-pl", tmp_path, seeds=[2**40])
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        reproduce("lmnn-pl", tmp_path, seeds=[])
    for name in ("dml", "robrank", "smoothing"):  # one torch process: n_jobs would be silently ignored
        with pytest.raises(ValueError, match=f"n_jobs applies to .*not '{name}'"):
            reproduce(name, tmp_path, n_jobs=2)
    for bad in (0, "2", True):
        with pytest.raises(ValueError, match="n_jobs must be a non-zero integer"):
            reproduce("arml", tmp_path, n_jobs=bad)
    assert not (tmp_path / "cache").exists()


@pytest.fixture
def tiny_dml(monkeypatch):
    from robust_metric_learning.experiments import dml

    monkeypatch.setattr(dml, "N_TRAIN", 300)
    monkeypatch.setattr(dml, "N_EVAL", 120)
    monkeypatch.setattr(dml, "TRAIN", {"epochs": 1, "m": 6, "lr": 1e-3})
    monkeypatch.setattr(dml, "TRAIN_STEPS", 2)
    monkeypatch.setattr(dml, "EVAL_STEPS", 2)
    monkeypatch.setattr(dml, "EVAL_RESTARTS", 1)
    monkeypatch.setattr(dml, "EVAL_PGD_STEPS", 2)
    monkeypatch.setattr(dml, "EVAL_FOCUS", ((0.3, 2), (0.1, 4)))
    monkeypatch.setattr(dml, "EVAL_ROUNDS", 2)
    monkeypatch.setattr(dml, "DECAY_PGD", {**dml.DECAY_PGD, "steps": 5, "restarts": 1})
    monkeypatch.setattr(dml, "N_SHIFT_CHECK", 20)
    return dml


def test_dml_resumes_recomputes_corrupt_entries_and_reports(tmp_path, monkeypatch, tiny_dml):
    calls = []
    real = tiny_dml.run_task

    def counting(dataset, loss, defense, seed, data, *, checkpoint=None):
        calls.append((loss, defense))
        return real(dataset, loss, defense, seed, data, checkpoint=checkpoint)

    monkeypatch.setattr(tiny_dml, "run_task", counting)
    kw = dict(datasets=["digits"], methods=["natural", "ours"], verbose=False)
    summary = reproduce("dml", tmp_path, **kw)
    assert sorted(calls) == sorted((lo, d) for lo in ("triplet", "contrastive") for d in ("natural", "ours"))
    for name in ("report.md", "results.json", "digits_triplet_adv_recall.png", "digits_contrastive_adv_recall.png"):
        assert (tmp_path / name).stat().st_size > 0
    p = summary["results"]["digits"]["triplet"]["ours"]
    assert p["n_train"] == 300 and p["n_eval"] == 120
    assert 0 < p["clean"]["precision_at_1"] <= 1
    # robust accuracy never exceeds clean, and shrinks with eps
    adv = [p["clean"]["precision_at_1"], *p["adv_recall_at_1"]]
    assert all(a >= b - 1e-12 for a, b in zip(adv, adv[1:]))
    assert all(c <= p["clean"]["precision_at_1"] + 1e-12 for c in p["certified_recall_at_1"])
    assert "| ours |" in (tmp_path / "report.md").read_text()
    # each evaluation stage has its checkpoint beside the training one (a stopped task resumes there)
    assert {c.name for c in (tmp_path / "checkpoints").glob("dml-digits-contrastive-ours-*")} == {
        f"dml-digits-contrastive-ours-seed0{s}.pt" for s in ("", "-decay_pgd", "-doubled", "-eval")}
    # a rerun computes nothing; a corrupt entry is recomputed alone, from its checkpoints, the same
    reproduce("dml", tmp_path, **kw)
    assert len(calls) == 4
    path = ResultCache(tmp_path / "cache").path(("dml", "digits", "contrastive", "ours", "seed0"))
    path.write_text(path.read_text()[:100])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = reproduce("dml", tmp_path, **kw)
    assert calls[4:] == [("contrastive", "ours")]
    before = summary["results"]["digits"]["contrastive"]["ours"]
    after = again["results"]["digits"]["contrastive"]["ours"]
    for key in ("adv_recall_at_1", "adv_map_at_r", "attack_success", "adv_passes_per_query", "adv_s"):
        assert after[key] == before[key]  # (the cost too: read back with the results, not re-measured)
    assert before["adv_passes_per_query"]["backward"] > 0
    same = {k: v for k, v in before["strength"].items() if "shift" not in k and "restored" not in k}
    assert {k: after["strength"][k] for k in same} == same
    assert after["strength"]["doubled_restored_s"] == after["strength"]["doubled_s"] > 0
    # the spectrally normalised variant runs only when asked for, beside the cached ones
    summary = reproduce("dml", tmp_path, **{**kw, "methods": ["natural", "ours", "ours-sn"]})
    assert sorted(calls[5:]) == [("contrastive", "ours-sn"), ("triplet", "ours-sn")]
    for loss in ("triplet", "contrastive"):
        res = summary["results"]["digits"][loss]
        assert list(res) == ["natural", "ours", "ours-sn"]
        assert res["ours-sn"]["lipschitz"] < res["ours"]["lipschitz"]
    with pytest.raises(ValueError, match="methods must be among"):
        reproduce("dml", tmp_path, datasets=["digits"], methods=["madry"], verbose=False)


def test_dml_strength_check_counts_what_the_stronger_attacks_add_to_the_evaluation(monkeypatch, tiny_dml):
    import torch
    from sklearn.datasets import load_digits

    from robust_metric_learning.deep import adversarial_retrieval
    from robust_metric_learning.experiments.dml import strength_check

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6))
    X, y = load_digits(return_X_y=True)
    X, y = (X[:90] / 16.0).astype(np.float32), y[:90]
    y[7] = 99  # a class of one: no other item, left out of R@1 as precision_at_1 leaves it out
    monkeypatch.setattr(tiny_dml, "TRAIN_EPS", 0.05)
    monkeypatch.setattr(tiny_dml, "EVAL_EPS", (0.02, 0.05))
    adv = adversarial_retrieval(model, X, y, eps=[0.02, 0.05], attack=tiny_dml.eval_attack(0))
    subset = np.arange(40)
    s = strength_check(model, X, y, adv, subset, 0)
    sub = adversarial_retrieval(model, X, y, eps=[0.0], queries=subset)  # R@1 over the subset's valid queries
    valid = np.r_[0:7, 8:40]
    broken = adv["flipped"][1][subset]
    assert s["ensemble"] == pytest.approx(np.mean((adv["attacked"][subset] & ~broken)[valid]), abs=1e-12)
    assert sub["clean"]["precision_at_1"] >= s["ensemble"]
    for label, attack in (("doubled", tiny_dml.eval_attack(0, scale=2)), ("decay_pgd", tiny_dml.decay_pgd(0))):
        r = adversarial_retrieval(model, X, y, eps=[0.05], attack=attack, queries=subset)
        assert s[label] == r["precision_at_1"][0]
        assert s[f"{label}_extra"] == int((r["flipped"][0] & ~broken)[valid].sum())
    assert s["doubled_drop_points"] == pytest.approx(100 * s["doubled_extra"] / 39)
    assert s["beats_decay_pgd"] == (s["ensemble"] <= s["decay_pgd"] + 1e-12)


def test_dml_role_ablation_defences_differ_from_ours_only_in_the_role():
    from robust_metric_learning.deep import RobustTriplets
    from robust_metric_learning.experiments import dml

    ours = dml.make_defense("ours")
    for role in ("positive", "negative"):
        d = dml.make_defense(f"ours-{role}")
        assert isinstance(d, RobustTriplets) and d.role == role and ours.role == "anchor"
        assert (d.eps, d.steps, d.rate, d.norm) == (ours.eps, ours.steps, ours.rate, ours.norm)
    assert dml.make_defense("ours-sn").role == "anchor"
    # the training eps is the protocol's unless given (bench_dml_train_eps varies it); only it changes
    assert ours.eps == dml.TRAIN_EPS
    wider = dml.make_defense("ours", eps=0.2)
    assert repr(wider) == repr(ours).replace(f"eps={dml.TRAIN_EPS}", "eps=0.2")
    assert dml.make_defense("naive", eps=0.05).eps == 0.05
    with pytest.raises(ValueError, match="defense must be one of"):
        dml.make_defense("ours-anchor")


def test_robrank_plugin_runs_caches_reports_and_refuses_bad_settings(tmp_path, monkeypatch):
    from robust_metric_learning.datasets import dataset_status
    from robust_metric_learning.deep import ERS_COLUMNS, empirical_robustness_score
    from robust_metric_learning.experiments import robrank

    if not dataset_status()["fashion-mnist"]["available"]:
        pytest.skip("Fashion-MNIST files are not in the data home (RML_DATA)")
    monkeypatch.setitem(robrank.PROFILES, "toy", {"n_train": 200, "epochs": 1, "train_steps": 1})
    monkeypatch.setattr(robrank, "EVAL", {**robrank.EVAL, "steps": 2, "apgd_steps": 2})
    monkeypatch.setattr(robrank, "N_ENSEMBLE", 8)
    kw = dict(datasets=["fashion-mnist"], methods=["natural", "act"], n_eval=40, profile="toy", verbose=False)
    summary = reproduce("robrank", tmp_path, **kw)
    rows = summary["results"]["fashion-mnist"]["toy"]
    assert set(rows) == {"natural", "act"}
    for r in rows.values():
        assert r["n_eval"] == 40 and r["n_train"] == 200 and r["ensemble_queries"] == 8
        assert 0 <= r["recall_at_1"] <= 1 and 0 <= r["ensemble_recall_at_1"] <= r["recall_at_1"] + 1e-12
        assert list(r["adversarial"]) == list(ERS_COLUMNS) and r["ERS"] is not None
        # the published attack's own columns and their ERS
        assert list(r["published_attack"]) == list(ERS_COLUMNS)
        assert r["published_attack_ERS"] == pytest.approx(empirical_robustness_score(r["published_attack"]))
    report = (tmp_path / "report.md").read_text()
    assert "| act | RobRank (published) | 0.787 |" in report and "| 63.3 |" in report
    assert "| act | ours, strongest |" in report and "| act | ours, RobRank's attack |" in report
    # cached: a rerun computes nothing
    monkeypatch.setattr(robrank, "run_task", lambda *a, **k: pytest.fail("recomputed a cached task"))
    assert reproduce("robrank", tmp_path, **kw)["results"] == summary["results"]
    with pytest.raises(ValueError, match=r"profile must be one of \['full', 'cpu'"):
        reproduce("robrank", tmp_path, profile="gpu")
    with pytest.raises(ValueError, match="methods must be among"):
        reproduce("robrank", tmp_path, methods=["ours"], profile="toy")
    with pytest.raises(ValueError, match="datasets must be among"):
        reproduce("robrank", tmp_path, datasets=["digits"], profile="toy")
    with pytest.raises(ValueError, match="profile applies to the experiments that have profiles"):
        reproduce("dml", tmp_path, profile="cpu")


def test_dml_runs_the_act_and_hm_rows(tmp_path, tiny_dml):
    summary = reproduce("dml", tmp_path, datasets=["digits"], methods=["act", "hm"], verbose=False)
    for loss in ("triplet", "contrastive"):
        rows = summary["results"]["digits"][loss]
        assert set(rows) == {"act", "hm"}
        for p in rows.values():
            assert all(n > 0 for n in p["n_adversarial"]) and 0 < p["clean"]["precision_at_1"] <= 1
    assert "AntiCollapseTriplets" in repr(tiny_dml.make_defense("act"))
    assert tiny_dml.make_defense("hm").margin == tiny_dml.HM_MARGIN


@pytest.mark.parametrize("experiment, extra", [("dml", {}), ("robrank", {"profile": "cpu"})])
def test_several_seeds_give_separate_result_rows(experiment, extra, tmp_path):
    import importlib

    mod = importlib.import_module(f"robust_metric_learning.experiments.{experiment}")
    kw = dict(datasets=["mnist"], methods=["natural"], n_eval=None, shuffle_seed=None, n_jobs=None,
              data_home=None, verbose=False, **extra)
    one, _ = mod.plan(experiment, tmp_path, seeds=[0], **kw)
    two, _ = mod.plan(experiment, tmp_path, seeds=[0, 1], **kw)
    assert len({t.path for t in two}) == len(two) == 2 * len(one)  # no seed overwrites another
    assert all(t.path[-1] == "natural" for t in one)  # one seed: the plain method name


def test_dml_report_pairs_natural_and_ours_within_each_seed():
    from robust_metric_learning.experiments.dml import _by_seed

    rows = {"natural seed 0": 1, "ours seed 0": 2, "natural seed 1": 3, "ours seed 1": 4}
    assert _by_seed(rows) == {" (seed 0)": {"natural": 1, "ours": 2}, " (seed 1)": {"natural": 3, "ours": 4}}
    assert _by_seed({"natural": 1, "ours": 2}) == {"": {"natural": 1, "ours": 2}}


def test_smoothing_plugin_certifies_attacks_caches_and_reports(tmp_path, monkeypatch, tiny_dml):
    from robust_metric_learning.experiments import smoothing

    monkeypatch.setattr(smoothing, "N_SAMPLES", 400)
    monkeypatch.setattr(smoothing, "N_SELECT", 20)
    monkeypatch.setattr(smoothing, "ALPHA", 0.01)
    monkeypatch.setattr(smoothing, "N_ATTACK", 4)
    monkeypatch.setattr(smoothing, "ATTACK", {"scales": (1.0, 2.0), "steps": 5, "n_grad_samples": 8, "n_check": 200})
    kw = dict(datasets=["digits"], methods=["sigma0.25"], n_eval=30, verbose=False)
    summary = reproduce("smoothing", tmp_path, **kw)
    p = summary["results"]["digits"]["sigma0.25"]
    assert p["n_queries"] == 30 and p["sigma"] == 0.25 and p["radii"] == list(smoothing.RADII)
    cert = p["certified_recall_at_1"]
    assert all(0 <= v <= p["smoothed_recall_at_1"] + 1e-12 for v in cert) and cert == sorted(cert, reverse=True)
    assert p["attack"]["scale_1"]["broken"] == 0 and p["attack"]["n_attacked"] == 4  # some queries certified
    assert p["attack"]["scale_2"]["p_attacked"] < p["attack"]["scale_2"]["p_clean"]  # and pushed at 2x
    report = (tmp_path / "report.md").read_text()
    assert "| sigma0.25 |" in report and (tmp_path / "digits_certified_recall.png").exists()
    real = smoothing.run_task
    monkeypatch.setattr(smoothing, "run_task", lambda *a, **k: pytest.fail("recomputed a cached task"))
    assert reproduce("smoothing", tmp_path, **kw)["results"] == summary["results"]
    assert "| sigma0.25 | 400, 0.01 |" in report and "(1x) /" in report
    # the checkpoint does not depend on n_eval: another n_eval certifies again without training again
    assert [c.name for c in (tmp_path / "checkpoints").iterdir()] == ["smoothing-digits-sigma0.25-seed0.pt"]
    monkeypatch.setattr(smoothing, "run_task", real)
    monkeypatch.setattr(smoothing, "N_ATTACK", 0)  # no attack: the report says so
    other = reproduce("smoothing", tmp_path / "none", **{**kw, "n_eval": 20})["results"]["digits"]["sigma0.25"]
    assert other["attack"] is None and "| - |" in (tmp_path / "none" / "report.md").read_text()
    with pytest.raises(ValueError, match="methods must be among"):
        reproduce("smoothing", tmp_path, methods=["sigma1"])
    with pytest.raises(ValueError, match="n_eval must be an integer >= 1"):
        reproduce("smoothing", tmp_path, n_eval=0)
    # refused up front, not when a model built for 28x28 (or 8x8) images meets iris's 4 features
    with pytest.raises(ValueError, match=r"datasets must be among \['mnist', 'fashion-mnist', 'digits'\] for "
                                         r"smoothing \(the dml protocol's models\), got \['iris'\]"):
        reproduce("smoothing", tmp_path, datasets=["digits", "iris"])

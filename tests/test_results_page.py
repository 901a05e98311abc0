"""The results page generator (docs/results_page.py) on a copy of benchmarks/results: numbers land in
their rows, and a missing, damaged or unexpected file never stops the build."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _module():
    spec = importlib.util.spec_from_file_location("results_page_under_test", REPO / "docs" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rp = _module()


@pytest.fixture
def results(tmp_path: Path) -> Path:
    dst = tmp_path / "results"
    if RESULTS.is_dir():
        shutil.copytree(RESULTS, dst, ignore=shutil.ignore_patterns("*.tmp"))
    else:
        dst.mkdir()
    return dst


def render(folder: Path) -> str:
    out = folder.parent / "page" / "results.rst"
    rp.write_results_page(str(out), str(folder))
    return out.read_text(encoding="utf-8")


def tables(rst: str) -> dict[str, list[list[str]]]:
    """title -> rows (header first) of every list-table in ``rst``."""
    found: dict[str, list[list[str]]] = {}
    rows: list[list[str]] | None = None
    for line in rst.splitlines():
        if line.startswith(".. list-table:: "):
            rows = found.setdefault(line[len(".. list-table:: "):], [])
        elif rows is not None and line.startswith("   * - "):
            rows.append([line[len("   * - "):]])
        elif rows is not None and line.startswith("     - "):
            rows[-1].append(line[len("     - "):])
        elif rows is not None and line and not line.startswith("   "):
            rows = None
    return found


def row(table: list[list[str]], first: str) -> list[str]:
    matches = [r for r in table[1:] if r[0] == first]
    assert len(matches) == 1, (first, table)
    return matches[0]


def _write_arml(folder: Path) -> None:
    entry = {"dataset": "pendigits", "n_eval": 1000, "eps": [0.1, 0.2, 0.3], "params": {}, "certify_s": 1.0}
    data = {
        "pendigits/Euclidean/1000": {**entry, "method": "Euclidean", "fit_s": 0.0, "clean_error": 0.4321,
                                     "robust_error": [0.5, 0.625, 0.75]},
        "pendigits/NCA/1000": {**entry, "method": "NCA", "fit_s": 12.5, "clean_error": 0.019,
                               "robust_error": [0.164, 0.537, 0.858]},
    }
    (folder / "arml.json").write_text(json.dumps(data))


def test_a_number_read_from_a_json_lands_in_its_row(results: Path) -> None:
    _write_arml(results)
    t = tables(render(results))["pendigits, 1000 test points: exact 1-NN robust error"]
    assert t[0][:5] == ["method", "clean", "ε = 0.1", "ε = 0.2", "ε = 0.3"]
    assert row(t, "Euclidean")[1:5] == [".432", ".500", ".625", ".750"]
    assert row(t, "NCA")[1:6] == [".019", ".164", ".537", ".858", "12"]


def test_every_dml_cache_file_is_one_sorted_row_and_a_damaged_one_is_left_out(results: Path) -> None:
    cache = results / "dml_cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir()

    def entry(dataset: str, loss: str, defense: str, clean: float) -> dict:
        payload = {"dataset": dataset, "loss": loss, "defense": defense, "seed": 0, "n_train": 10, "n_eval": 5,
                   "clean": {"precision_at_1": clean, "mean_average_precision_at_r": 0.25},
                   "eps": [0.01, 0.1], "adv_recall_at_1": [clean / 2, 0.0625], "certified_recall_at_1": [0.0, 0.0],
                   "cert_l2_eps": [0.01], "certified_recall_at_1_l2": [0.125], "lipschitz": 40.0,
                   "strength": {"eps": 0.1, "n_queries": 3, "ensemble": 0.0625, "doubled": 0.0625,
                                "decay_pgd": 0.25, "doubled_drop_points": 0.0, "beats_decay_pgd": True},
                   "adv_s": 123.4, "adv_passes_per_query": {"forward": 10.0, "backward": 9.0}, "epoch_s": [1.0, 2.0]}
        if defense != "naive":  # the current strength check counts the stronger attacks' extra breaks
            payload["strength"].update(doubled_extra=0, decay_pgd_extra=1)
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return {"key": ["dml", dataset, loss, defense, "seed0"], "fingerprint": "f",
                "sha256": hashlib.sha256(canonical.encode()).hexdigest(), "payload": payload}

    for dataset, loss, defense, clean in [("fashion-mnist", "triplet", "ours", 0.875), ("mnist", "triplet", "naive", 0.5),
                                          ("mnist", "triplet", "natural", 0.75)]:
        name = f"dml__{dataset}__{loss}__{defense}__seed0.json"
        (cache / name).write_text(json.dumps(entry(dataset, loss, defense, clean)))
    edited = entry("mnist", "contrastive", "est", 0.375)
    edited["payload"]["clean"]["precision_at_1"] = 0.999          # no longer matches its checksum
    (cache / "dml__mnist__contrastive__est__seed0.json").write_text(json.dumps(edited))
    (cache / "dml__mnist__contrastive__ours__seed0.json").write_text('{"key": ["dml", "mni')  # truncated

    rst = render(results)
    t = tables(rst)["Deep metric learning: clean, adversarial and certified Recall@1"]
    assert [r[:3] for r in t[1:]] == [["mnist", "triplet", "natural"], ["mnist", "triplet", "naive"],
                                      ["fashion-mnist", "triplet", "ours"]]
    assert t[3][4:9] == [".875", ".250", ".438", ".062", ".125"]
    assert "``dml_cache/dml__mnist__contrastive__est__seed0.json``: its payload fails its SHA-256" in rst
    assert "``benchmarks/results/dml_cache/dml__mnist__contrastive__ours__seed0.json`` cannot be read" in rst
    strength = tables(rst)["Deep metric learning: attack-strength check"]
    assert row(strength, "fashion-mnist")[6:11] == [".062", ".062", ".250", "0.00", "0 / 1"]
    # rows of the earlier ensemble (no extra-break counts) are named as upper bounds
    assert ("read their adversarial figures as upper bounds until they are remeasured: mnist / triplet / naive / 0."
            in " ".join(rst.split()))


def test_a_missing_file_says_not_measured_yet(results: Path) -> None:
    (results / "attacks.json").unlink(missing_ok=True)
    _write_arml(results)
    rst = render(results)
    lines = [line for line in rst.splitlines() if rp.NOT_MEASURED in line]
    assert sum("``benchmarks/results/attacks.json`` is missing" in line for line in lines) == 2  # speed, strength
    assert "Structural attack against the Boundary attack" not in tables(rst)
    assert "pendigits, 1000 test points: exact 1-NN robust error" in tables(rst)  # the rest still renders


@pytest.mark.parametrize("content, says", [('{"rows": [{"dataset": "usps", ', "cannot be read"),
                                           ("[1, 2, 3]", "does not hold what this table reads"),
                                           ('{"rows": [{"dataset": "usps"}]}', "does not hold what this table reads")])
def test_a_damaged_json_says_not_measured_yet(results: Path, content: str, says: str) -> None:
    (results / "certify.json").write_text(content)
    rst = render(results)
    line = next(line for line in rst.splitlines() if "certify.json" in line and rp.NOT_MEASURED in line)
    assert says in line
    assert not any("milliseconds per point" in title for title in tables(rst))  # no half-written table


def test_unknown_json_files_are_listed_by_name(results: Path) -> None:
    (results / "surprise.json").write_text("{}")
    (results / "later").mkdir()
    (results / "later" / "results.json").write_text("{}")
    rst = render(results)
    other = rst.split("Other files\n-----------\n", 1)[1]
    assert "* ``surprise.json``" in other and "* in ``later/``: ``results.json``" in other
    assert "``arml.json``" not in other


def test_an_empty_folder_renders_a_page_of_not_measured_yet(tmp_path: Path) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    rst = render(folder)
    assert not tables(rst)
    assert rst.count(rp.NOT_MEASURED) >= 14
    assert rst.startswith("Benchmarks and results\n======================\n")


def test_the_page_is_valid_restructuredtext(results: Path) -> None:
    docutils_core = pytest.importorskip("docutils.core")
    import io

    _write_arml(results)
    (results / "certify.json").write_text("{ damaged")
    stream = io.StringIO()
    docutils_core.publish_doctree(render(results),
                                  settings_overrides={"warning_stream": stream, "report_level": 2, "halt_level": 5})
    assert stream.getvalue() == ""


def test_formats() -> None:
    assert (rp.rate(0.0325), rp.rate(1.0), rp.rate(None)) == (".033", "1.000", "—")
    assert (rp.ratio(240.1), rp.ratio(29.57), rp.ratio(0.4515)) == ("240×", "29.6×", "0.45×")
    assert (rp.secs(650.19), rp.secs(2.76), rp.secs(0.5816), rp.secs(float("nan"))) == ("650", "2.8", "0.58", "nan")
    assert rp.text("a_b *c* `d` |e|") == "a\\_b \\*c\\* \\`d\\` \\|e\\|"


def test_the_doubling_drop_of_each_evaluated_model_is_judged_against_the_standard(results: Path) -> None:
    def run(r1: float) -> dict:
        return {"r1": r1, "seconds": 1.0, "forward_per_query": 10.0, "attack": "RetrievalEnsemble()"}

    data = {"naive/seed=0": {"defense": "naive", "seed": 0, "clean_r1": 0.9,
                             "runs": {"ensemble/seed=0": run(0.2233), "doubled/seed=0": run(0.2167)}},
            "ours/seed=0": {"defense": "ours", "seed": 0, "clean_r1": 0.9,
                            "runs": {"ensemble/seed=0": run(0.05), "doubled/seed=0": run(0.05)}},
            "natural/seed=0": {"defense": "natural", "seed": 0, "clean_r1": 0.9, "runs": {"pgd20/seed=0": run(0.1)}}}
    (results / "eval_attack.json").write_text(json.dumps(data))
    page = " ".join(render(results).split())
    assert "naive 0.66 (above the standard); ours 0.00 (within the standard)." in page
    assert "difference of the two figures" in page  # these runs record no broken queries
    assert "natural 0" not in page  # no doubled run: no verdict
    # with the broken queries recorded: the queries only the doubled run breaks (a net difference
    # of 0 hides one extra break on each side)
    data["naive/seed=0"].update(n_queries=300, runs={"ensemble/seed=0": {**run(0.2), "broken": [1, 2, 3]},
                                                    "doubled/seed=0": {**run(0.2), "broken": [1, 2, 4]}})
    data["ours/seed=0"]["runs"] = {k: {**r, "broken": [5]} for k, r in data["ours/seed=0"]["runs"].items()}
    data["ours/seed=0"]["n_queries"] = 300
    (results / "eval_attack.json").write_text(json.dumps(data))
    page = " ".join(render(results).split())
    assert "naive 0.33 (within the standard); ours 0.00 (within the standard)." in page
    assert "difference of the two figures" not in page

"""The statistics of the result tables (``evaluation/statistics.py``, ``Result_Evaluations.py
--ci/--test/--query_bootstrap``): intervals and p-values against scipy on hand-made numbers, the
query bootstrap against a brute-force loop, and the bold cells of a generated LaTeX table."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import metrics
import Result_Evaluations as RE
from evaluation import statistics as S
from utilities.errors import ConfigError

X = [0.61, 0.64, 0.58, 0.66, 0.60]  # R@1 of five seeds


# ---- intervals over seeds ------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("values", [X, [0.5, 0.7], [0.31, 0.35, 0.2]])
def test_t_interval_is_scipys(values, alpha):
    expected = stats.t.interval(1 - alpha, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert S.t_interval(values, alpha) == pytest.approx(expected, rel=1e-12)


def test_t_interval_by_hand_and_edge_cases():
    # 0.5, 0.6, 0.7: s = 0.1, t(0.975, 2) = 4.302653: 0.6 ± 0.248414
    assert S.t_interval([0.5, 0.6, 0.7]) == pytest.approx((0.6 - 0.2484138, 0.6 + 0.2484138), abs=1e-7)
    assert all(math.isnan(v) for v in S.t_interval([0.5]))  # one seed: no interval
    assert S.t_interval([0.4, 0.4, 0.4]) == (pytest.approx(0.4), pytest.approx(0.4))  # no spread


def test_percentile_bootstrap_is_scipys():
    x = np.array(X)
    ours = S.bootstrap_interval(x, 0.05, n_resamples=2000, seed=7)
    # the same generator: scipy draws the same resamples and takes the same quantiles
    same = stats.bootstrap((x,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(7))
    assert ours == pytest.approx(tuple(same.confidence_interval), abs=1e-12)
    # another seed: equal up to bootstrap noise
    other = stats.bootstrap(
        (x,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(1)
    )
    assert ours == pytest.approx(tuple(other.confidence_interval), abs=0.004)
    assert ours[0] < x.mean() < ours[1] and x.min() <= ours[0] and ours[1] <= x.max()
    assert S.bootstrap_interval(x, seed=7) == S.bootstrap_interval(x, seed=7)  # seeded
    assert all(math.isnan(v) for v in S.bootstrap_interval([0.5]))


# ---- tests against the best ------------------------------------------------------------------------

BEST = {0: 0.64, 1: 0.66, 2: 0.61, 3: 0.67, 4: 0.63}
OTHER = {0: 0.60, 1: 0.65, 2: 0.60, 3: 0.62, 4: 0.63}


def _xy(a, b):
    return [a[s] for s in sorted(a)], [b[s] for s in sorted(b)]


def test_p_values_are_scipys():
    x, y = _xy(BEST, OTHER)
    assert S.compare(BEST, OTHER) == S.Comparison(pytest.approx(stats.ttest_rel(x, y).pvalue), "paired_t")
    assert S.compare(BEST, OTHER, "paired_t").p == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-12)
    assert S.compare(BEST, OTHER, "wilcoxon") == S.Comparison(
        pytest.approx(stats.wilcoxon(x, y).pvalue), "wilcoxon"
    )
    welch = stats.ttest_ind(x, y, equal_var=False).pvalue
    assert S.compare(BEST, OTHER, "welch") == S.Comparison(pytest.approx(welch, rel=1e-12), "welch")
    # different seeds: no pairs, Welch whatever was asked
    shifted = {s + 10: v for s, v in OTHER.items()}
    for test in S.TESTS:
        assert S.compare(BEST, shifted, test) == S.Comparison(pytest.approx(welch, rel=1e-12), "welch")
    # by hand: d = 0.04, 0.01, 0.01, 0.05, 0.00; mean 0.022, s = 0.0216795, t = 2.269 on 4 df
    assert stats.t.sf(0.022 / (0.0216795 / math.sqrt(5)), 4) * 2 == pytest.approx(
        S.compare(BEST, OTHER).p, rel=1e-4
    )


def test_edge_cases_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no precision-loss or normal-approximation warnings
        for test in ("auto", "paired_t", "wilcoxon"):
            assert S.compare(BEST, dict(BEST), test).p == 1.0  # identical values
        assert S.compare(BEST, dict(BEST), "welch").p == pytest.approx(1.0)
        assert S.compare({0: 0.5, 1: 0.5}, {2: 0.5, 3: 0.5}).p == 1.0  # two constant groups, equal
        assert S.compare({0: 0.5, 1: 0.5}, {2: 0.4, 3: 0.4}) == S.Comparison(0.0, "welch")
        shift = {s: v - 0.1 for s, v in BEST.items()}  # a constant shift (up to float noise)
        assert S.compare(BEST, shift) == S.Comparison(0.0, "paired_t")
        # signed ranks of five positive differences: the smallest two-sided p, 2 / 2^5
        assert S.compare(BEST, shift, "wilcoxon") == S.Comparison(pytest.approx(0.0625), "wilcoxon")
        # one seed on either side: no test
        for a, b in (({0: 0.6}, {0: 0.5}), (BEST, {9: 0.5}), ({9: 0.6}, OTHER)):
            result = S.compare(a, b)
            assert math.isnan(result.p) and result.test == S.UNTESTED


def test_bad_options_are_one_line_config_errors():
    for kwargs, match in (({"ci": "bca"}, "--ci bca"), ({"alpha": 1.5}, "--alpha 1.5"),
                          ({"test": "anova"}, "--test anova"), ({"n_resamples": 10}, "--bootstrap 10"),
                          ({"query_resamples": 5}, "--query_bootstrap 5")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            S.check_options(**kwargs)
    S.check_options(query_resamples=0)


# ---- query bootstrap against a brute-force loop ---------------------------------------------------


def _toy_split():
    """14 points in 2-D, 4 classes (one lone sample: R = 0, a miss for Recall, left out of MAP@R)."""
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3])
    centres = np.array([[0, 0], [1.5, 0], [0, 1.5], [1, 1]])
    emb = (centres[labels] + rng.normal(scale=0.7, size=(len(labels), 2))).astype(np.float32)
    return emb, labels


def _brute(emb, labels):
    """Per query (leave-one-out): the rank list of the others, nearest first (ties: lower index)."""
    x = emb.astype(np.float64)
    hit1, ap = [], []
    for q in range(len(x)):
        others = [g for g in range(len(x)) if g != q]
        order = sorted(others, key=lambda g: (((x[q] - x[g]) ** 2).sum(), g))
        rel = [labels[g] == labels[q] for g in order]
        hit1.append(float(rel[0]))
        r = sum(rel)
        ap.append(sum(rel[i] * sum(rel[: i + 1]) / (i + 1) for i in range(r)) / r if r else float("nan"))
    return np.array(hit1), np.array(ap)


def _brute_bootstrap(values, n_resamples, alpha, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), (n_resamples, len(values)))
    out = []
    for row in idx:  # one resample at a time, the queries of the metric's mean only
        drawn = [values[i] for i in row if not math.isnan(values[i])]
        out.append(np.mean(drawn))
    return tuple(np.quantile(out, [alpha / 2, 1 - alpha / 2]))


def test_query_bootstrap_matches_a_brute_force_loop():
    emb, labels = _toy_split()
    hit1, ap = _brute(emb, labels)
    values = S.per_query_values(emb, labels, ["e_recall@1", "mAP@R"])
    assert values["e_recall@1"][0] == pytest.approx(hit1)
    assert values["mAP@R"][1].tolist() == (~np.isnan(ap)).astype(float).tolist()  # R >= 1 only
    assert values["mAP@R"][0][~np.isnan(ap)] == pytest.approx(ap[~np.isnan(ap)], abs=1e-12)
    reference = metrics.compute(["e_recall@1", "mAP@R"], torch.tensor(emb), torch.tensor(labels))
    for name, (v, w) in values.items():
        assert (v * w).sum() / w.sum() == pytest.approx(reference[name], abs=1e-12)
    bounds = S.query_bootstrap(values, n_resamples=400, alpha=0.1, seed=5)
    assert bounds["e_recall@1"] == pytest.approx(_brute_bootstrap(hit1, 400, 0.1, 5), abs=1e-12)
    assert bounds["mAP@R"] == pytest.approx(_brute_bootstrap(ap, 400, 0.1, 5), abs=1e-12)
    chunked = S.query_bootstrap(values, 400, 0.1, 5, chunk=7)  # 7 resamples per count matrix: same draws
    assert all(chunked[name] == pytest.approx(bounds[name], abs=1e-12) for name in bounds)
    low, high = bounds["e_recall@1"]
    assert low < hit1.mean() < high


def test_query_intervals_with_query_and_gallery_masks():
    emb, labels = _toy_split()
    is_query = np.arange(len(labels)) % 2 == 0
    data = {"embeddings": emb, "labels": labels, "is_query": is_query, "is_gallery": ~is_query}
    got = S.query_intervals(data, ["e_recall@2", "c_recall@1"], n_resamples=200, seed=1)
    reference = metrics.compute(["e_recall@2", "c_recall@1"], torch.tensor(emb), torch.tensor(labels),
                                query_mask=torch.tensor(is_query), gallery_mask=torch.tensor(~is_query))  # fmt: skip
    for name, q in got.items():
        assert q.value == pytest.approx(reference[name], abs=1e-12) and q.low <= q.value <= q.high
    with pytest.raises(ValueError, match="no per-query form for nmi"):
        S.per_query_values(emb, labels, ["nmi"])


# ---- the tables: bold by test, p-values, intervals, query intervals ---------------------------------

R1 = {  # R@1 per seed: B within noise of A, C worse on every seed
    "DIG_A": [0.70, 0.74, 0.69, 0.75, 0.72],
    "DIG_B": [0.71, 0.70, 0.70, 0.74, 0.71],
    "DIG_C": [0.60, 0.63, 0.59, 0.66, 0.61],
}


def _runs(r1=R1, seeds=range(5)):
    return [
        RE.Run(dataset="digits", group=group, seed=seed, selected_epoch=1, selection_split="validation",
               selected={"testing": {"e_recall@1": v, "nmi": 0.5}}, name=f"{group}_s{seed}")
        for group, values in r1.items() for seed, v in zip(seeds, values, strict=True)
    ]  # fmt: skip


def _row(rows, group):
    (row,) = [r for r in rows if r["group"] == group]
    return row


def test_latex_bolds_the_best_and_the_methods_not_significantly_worse():
    rows = RE.aggregate(_runs())
    RE.add_statistics(rows)  # t-intervals, paired t-tests at 0.05
    key = "testing/e_recall@1"
    a, b, c = (_row(rows, g) for g in ("DIG_A", "DIG_B", "DIG_C"))
    assert a[f"{key}|test"] == "best" and f"{key}|p" not in a
    for row, group in ((b, "DIG_B"), (c, "DIG_C")):
        assert row[f"{key}|p"] == pytest.approx(stats.ttest_rel(R1["DIG_A"], R1[group]).pvalue, rel=1e-12)
        assert row[f"{key}|test"] == "paired_t"
    assert b[f"{key}|p"] > 0.05 > c[f"{key}|p"]
    low, high = stats.t.interval(0.95, 4, loc=np.mean(R1["DIG_A"]), scale=stats.sem(R1["DIG_A"]))
    assert (a[f"{key}|ci_low"], a[f"{key}|ci_high"]) == pytest.approx((low, high), rel=1e-12)
    text = RE.latex_single_table(rows, "digits", [RE.Column("R@1", key), RE.Column("NMI", "testing/nmi")])
    lines = {x.split(" & ")[0]: x.split(" & ") for x in text.splitlines() if x[:2] in ("A ", "B ", "C ")}
    half = (high - low) / 2 * 100
    assert lines["A"][1] == f"$\\mathbf{{72.00}}\\pm{half:.2f}$"  # mean ± the t half-width
    assert lines["B"][1].startswith("$\\mathbf{71.20}\\pm")  # within noise: bold
    assert lines["C"][1].startswith("$61.80\\pm")  # significantly worse: not bold
    assert len(lines) == 3 and all(
        "\\mathbf{50.00}" in cells[2] for cells in lines.values()
    )  # NMI: identical, p = 1
    caption = text.split("\\caption{")[1]
    assert "95\\% Student-t interval" in caption and "over 5 seeds" in caption
    assert "paired t-test over the common seeds" in caption and "$\\alpha = 0.05$" in caption
    # Welch where the seeds differ; one seed: not tested, and said so
    runs = _runs({"DIG_A": R1["DIG_A"]}) + _runs({"DIG_B": R1["DIG_B"]}, seeds=range(10, 15))
    runs += _runs({"DIG_D": [0.71]}, seeds=[0])
    rows = RE.aggregate(runs)
    RE.add_statistics(rows, test="auto")
    welch = stats.ttest_ind(R1["DIG_A"], R1["DIG_B"], equal_var=False).pvalue
    assert (
        _row(rows, "DIG_B")[f"{key}|p"] == pytest.approx(welch)
        and _row(rows, "DIG_B")[f"{key}|test"] == "welch"
    )
    assert math.isnan(_row(rows, "DIG_D")[f"{key}|p"]) and _row(rows, "DIG_D")[f"{key}|test"] == "n=1"
    text = RE.latex_single_table(rows, "digits", [RE.Column("R@1", key)])
    assert "Welch's t-test where the seeds differ" in text and "a method with one seed" in text
    assert "$71.00$ (n=1)" in text  # not tested: not bold


def _fake_run_folder(root, group, seed, r1, epoch_saved=None, emb=None, labels=None):
    folder = root / "digits" / f"{group}_s{seed}"
    folder.mkdir(parents=True)
    args = {"dataset": "digits", "seed": seed, "group": group, "loss": "margin"}
    (folder / "args.json").write_text(json.dumps({"args": args}))
    summary = {"selected_epoch": 1, "selection_split": "validation",
               "metrics": {"testing": {"e_recall@1": r1, "mAP@R": r1 / 2}}}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    if emb is not None:
        np.savez(
            folder / "embeddings_testing.npz", embeddings=emb, labels=labels, epoch=np.int64(epoch_saved)
        )


def test_cli_writes_intervals_p_values_and_query_intervals(tmp_path, capsys):
    emb, labels = _toy_split()
    root, out = tmp_path / "runs", tmp_path / "tables"
    for seed, (a, b) in enumerate(zip(R1["DIG_A"], R1["DIG_C"], strict=True)):
        # A's seed 0 and 1 saved the selected epoch's embeddings, seed 2 a later epoch's
        saved = {0: 1, 1: 1, 2: 2}.get(seed)
        _fake_run_folder(root, "DIG_A", seed, a, saved, *((emb, labels) if saved is not None else ()))
        _fake_run_folder(root, "DIG_C", seed, b)
    rows = RE.main(["--runs", str(root), "--out", str(out), "--no_figures", "--ci", "bootstrap",
                    "--bootstrap", "500", "--query_bootstrap", "300", "--test", "wilcoxon"])  # fmt: skip
    err = capsys.readouterr().err
    assert (
        "DIG_A: --query_bootstrap left out 3 of 5 runs" in err
        and "(embeddings of epoch 2, selected epoch 1)" in err
    )
    with (out / "results.csv").open() as f:
        table = {(r["group"], r["protocol"]): r for r in csv.DictReader(f)}
    a, c = table[("DIG_A", RE.SELECTED)], table[("DIG_C", RE.SELECTED)]
    key = "testing/e_recall@1"
    expected = S.bootstrap_interval(R1["DIG_A"], 0.05, 500, seed=0)
    assert (float(a[f"{key}|ci_low"]), float(a[f"{key}|ci_high"])) == pytest.approx(expected)
    assert float(c[f"{key}|p"]) == pytest.approx(stats.wilcoxon(R1["DIG_A"], R1["DIG_C"]).pvalue)
    assert c[f"{key}|test"] == "wilcoxon" and a["ci"] == "bootstrap" and a["alpha"] == "0.05"
    # both runs with the right embeddings hold the same split: the mean of two equal intervals
    (q,) = S.query_intervals({"embeddings": emb, "labels": labels}, ["e_recall@1"], n_resamples=300).values()
    assert (float(a[f"{key}|qci_low"]), float(a[f"{key}|qci_high"])) == pytest.approx((q.low, q.high))
    assert a[f"{key}|qci_n"] == "2" and a["testing/mAP@R|qci_n"] == "2" and c[f"{key}|qci_low"] == ""
    assert not any(name.startswith("_") for name in a)
    md = (out / "results.md").read_text()
    assert f"(p={float(c[f'{key}|p']):.3f})" in md and "Wilcoxon signed-rank test" in md
    assert _row([r for r in rows if r["protocol"] == RE.SELECTED], "DIG_A")[f"{key}|qci_n"] == 2
    with pytest.raises(SystemExit) as exc:
        RE.main(["--runs", str(root), "--out", str(out), "--alpha", "0"])
    assert exc.value.code == 2 and "--alpha 0.0: must lie strictly between 0 and 1" in capsys.readouterr().err

"""Tables 1-5 builder: row mapping, paired datasets, quoted rows, writers."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from mcl_core import config, tables

PAPER_OOD = ["svhn", "lsun_fix", "imagenet_fix", "cifar100"]
QUICK_OOD = ["digits@6,7,8,9", "photos", "noise"]


def _result(scorer, ways, agg, ood, acc, auroc, variant="official"):
    return {"scorer": scorer, "ways": ways, "agg": agg, "variant": variant,
            "ood": ood, "accuracy": acc, "auroc": auroc, "fpr95": 0.5,
            "aupr_in": 0.5, "aupr_out": 0.5}


def _metrics(experiment, ind, oods, rows):
    return {"experiment": experiment, "method": "mcl", "profile": "x",
            "ind_dataset": ind, "ood_datasets": oods, "results": rows}


def _mcl_metrics(ind, oods, acc=0.95, auroc=0.9):
    rows = [_result("mahalanobis", 1, "-", o, acc, auroc) for o in oods]
    rows += [_result("mahalanobis", w, a, o, acc + 0.01, auroc + 0.01)
             for w in (4, 8) for a in ("avg", "max", "w-avg", "w-avg-eq19")
             for o in oods]
    # a paper-variant duplicate must not replace the official number
    rows += [_result("mahalanobis", 8, "w-avg", o, 0.1, 0.1, "paper")
             for o in oods]
    return _metrics("mcl", ind, oods, rows)


def _cell(long, row, metric, paper_dataset=None, ours_dataset=None):
    sel = (long.row == row) & (long.metric == metric)
    if paper_dataset is not None:
        sel &= long.paper_dataset == paper_dataset
    if ours_dataset is not None:
        sel &= long.ours_dataset == ours_dataset
    assert sel.sum() == 1, (row, metric, paper_dataset, ours_dataset)
    return long[sel].iloc[0]


def test_every_paper_key_exists_in_the_paper_csv():
    paper = tables.load_paper_tables()
    for spec in tables.ROW_SPECS:
        if spec.paper_key is not None:
            assert spec.paper_key in paper, spec.label
        if spec.experiment is not None:
            assert spec.experiment in config.EXPERIMENT_NAMES, spec.label
    # 107 numbers in the CSV; every row of the paper is mapped once
    assert sum(len(v) for v in paper.values()) == 107
    mapped = {s.paper_key for s in tables.ROW_SPECS if s.paper_key}
    assert mapped == set(paper)


def test_headline_rows_map_to_mcl_with_8way_wavg():
    t1 = {s.label: s for s in tables.row_specs(1)}
    mcl = t1["MCL + SEI"]
    assert (mcl.experiment, mcl.scorers[0], mcl.ways, mcl.agg) == (
        "mcl", "mahalanobis", 8, "w-avg")
    assert t1["Baseline"].scorers == ("msp",)
    assert t1["ODIN"].scorers == ("odin",)
    t4 = tables.row_specs(4)
    assert [(s.ways, s.agg) for s in t4][:7] == [
        (1, "-"), (4, "avg"), (4, "max"), (4, "w-avg"), (8, "avg"),
        (8, "max"), (8, "w-avg")]
    with pytest.raises(ValueError, match="table must be one of"):
        tables.row_specs(6)


def test_difference_only_where_datasets_agree_paper_profile():
    metrics = {"mcl": _mcl_metrics("cifar10", PAPER_OOD, 0.95, 0.9)}
    long = tables.build_long_table(4, metrics, ind_dataset="cifar10",
                                   ood_datasets=PAPER_OOD)
    acc = _cell(long, "MCL + 8-way SEI, w-avg", "test_acc")
    assert acc.paper_value == pytest.approx(96.43)
    assert acc.ours_value == pytest.approx(96.0)
    assert acc["diff"] == pytest.approx(96.0 - 96.43, abs=1e-9)
    auroc = _cell(long, "MCL, no SEI", "auroc", "CIFAR-100", "CIFAR-100")
    assert auroc["diff"] == pytest.approx(90.0 - 91.12, abs=1e-9)
    # OOD sets the paper does not report for Table 4: ours only, no diff
    svhn = _cell(long, "MCL, no SEI", "auroc", "", "SVHN")
    assert svhn.ours_value == pytest.approx(90.0)
    assert svhn["diff"] is None or math.isnan(svhn["diff"])


def test_no_difference_when_datasets_differ_quick_profile():
    metrics = {"mcl": _mcl_metrics("digits", QUICK_OOD)}
    long = tables.build_long_table(1, metrics, ind_dataset="digits",
                                   ood_datasets=QUICK_OOD)
    assert long["diff"].isna().all()
    row = long[long.row == "MCL + SEI"]
    # paper columns and ours side by side, each with its dataset
    assert set(row.paper_dataset) == {"CIFAR-10", "SVHN", "LSUN-Fix",
                                      "ImageNet-Fix", "CIFAR-100", ""}
    assert set(row.ours_dataset) == {"digits", "digits@6,7,8,9", "photos",
                                     "noise", ""}
    ours = row[row.ours_dataset == "photos"].iloc[0]
    assert ours.ours_value == pytest.approx(91.0)
    assert ours.status == "reproduced"
    wide = tables.wide_table(long)
    assert "AUROC photos (ours)" in wide.columns
    assert "AUROC SVHN (paper)" in wide.columns
    assert not any(c.endswith("(diff)") for c in wide.columns)


def test_quoted_and_not_run_rows_are_marked():
    metrics = {"mcl": _mcl_metrics("digits", QUICK_OOD)}
    long = tables.build_long_table(1, metrics, ind_dataset="digits",
                                   ood_datasets=QUICK_OOD)
    for label in ("Outlier Exposure", "CSI + SupCLR",
                  "CSI + SupCLR + Ensemble"):
        rows = long[long.row == label]
        assert (rows.status == "quoted").all()
        assert rows.ours_value.isna().all()
    oe = long[long.row == "Outlier Exposure"].source.iloc[0]
    assert "80 Million Tiny Images" in oe and "withdrew" in oe
    assert (long[long.row == "Baseline"].status.isin(
        ["not run", "paper only"])).all()
    wide = tables.wide_table(long)
    base = wide[wide.Row == "Baseline"].iloc[0]
    assert base["Acc digits (ours)"] == "not run"
    oe_row = wide[wide.Row == "Outlier Exposure"].iloc[0]
    assert oe_row["Acc CIFAR-10 (paper)"] == tables.NOT_PRINTED
    assert oe_row["AUROC SVHN (paper)"] == "98.40"
    # the released-checkpoint row appears only in profiles that have it
    assert "MCL + SEI (authors' released checkpoint)" not in set(long.row)


def test_official_variant_and_scorer_fallback():
    rows = [_result("mahalanobis", 1, "-", "noise", 0.5, 0.7)]
    metrics = {"simclr_ce_ft": _metrics("simclr_ce_ft", "digits", ["noise"],
                                        rows)}
    long = tables.build_long_table(3, metrics, ind_dataset="digits",
                                   ood_datasets=["noise"])
    cell = _cell(long, "SimCLR (CE fine-tuned)", "auroc", None, "noise")
    assert cell.scorer == "mahalanobis"  # msp missing: next scorer used
    assert cell.ours_value == pytest.approx(70.0)
    metrics = {"mcl": _mcl_metrics("digits", ["noise"], 0.95, 0.9)}
    long = tables.build_long_table(5, metrics, ind_dataset="digits",
                                   ood_datasets=["noise"])
    cell = _cell(long, "MCL + aux, 8-way SEI w-avg", "auroc", None, "noise")
    assert cell.ours_value == pytest.approx(91.0)  # not the paper variant


def test_writers_markdown_latex_csv_and_sidecar(tmp_path):
    metrics = {"mcl": _mcl_metrics("cifar10", PAPER_OOD)}
    long = tables.build_long_table(4, metrics, ind_dataset="cifar10",
                                   ood_datasets=PAPER_OOD)
    paths = tables.write_table(4, long, tmp_path / "fig", profile="paper",
                               parameters={"runs_dir": "runs"},
                               long_dir=tmp_path / "cells")
    md = paths["md"].read_text().splitlines()
    header = next(i for i, line in enumerate(md) if line.startswith("| Row"))
    assert md[header + 1].startswith("|---|---:")
    assert "| MCL + 8-way SEI, w-avg | 96.43 | 96.00 | -0.43 |" in md[
        header + 8]
    tex = paths["tex"].read_text()
    assert r"\toprule" in tex and r"w-avg-eq19" not in tex.split(
        r"\midrule")[0]
    assert r"w-avg-eq19; not in the paper" in tex
    esc = tables.to_latex(pd.DataFrame({"Row": ["a_b & c"], "x": ["1"],
                                        "Source": ["50% #1"]}))
    assert r"a\_b \& c & 1 & 50\% \#1 \\" in esc
    meta = json.loads(paths["json"].read_text())
    assert meta["profile"] == "paper" and meta["table"] == 4
    assert meta["parameters"] == {"runs_dir": "runs"}
    assert "git_commit" in meta
    assert paths["cells"].parent.name == "cells"
    leftovers = [p for p in (tmp_path / "fig").iterdir()
                 if p.name.endswith(".tmp")]
    assert leftovers == []


def test_metrics_summary_and_score_lookup(tmp_path):
    summary = tables.metrics_summary(_mcl_metrics("digits", ["noise"]))
    first = summary.iloc[0]
    assert (first["scorer"], first["ways"], first["agg"]) == (
        "mahalanobis", 1, "-")
    assert first["AUROC noise"] == pytest.approx(90.0)
    assert len(summary) == 9  # 1 + 2 ways x 4 aggregations, official only
    np.savez(tmp_path / "scores.npz", **{
        "mahalanobis|1|-|noise|score": np.array([1.0, 2.0]),
        "mahalanobis|1|-|noise|pred": np.array([0, 1])})
    scores = tables.load_scores(tmp_path)
    s, p = tables.score_arrays(scores, "mahalanobis", 1, "w-avg", "noise")
    np.testing.assert_array_equal(s, [1.0, 2.0])
    with pytest.raises(KeyError, match="available"):
        tables.score_arrays(scores, "msp", 1, "-", "noise")
    with pytest.raises(FileNotFoundError, match="02_evaluate"):
        tables.load_scores(tmp_path / "missing")

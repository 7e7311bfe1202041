"""Tables 1-5 of the paper rebuilt from a profile's metrics files.

Each table row of the paper maps to one reproduced number set: an
experiment of the profile (``runs/<profile>/<experiment>/metrics.json``), a
scorer, an SEI way count and an aggregation. A cell of the output holds the
paper's value and the reproduced value side by side, each with the dataset
it was measured on; the difference is given only where both were measured
on the same dataset (the paper profile). Rows the paper quotes from other
work that this companion cannot rerun (Outlier Exposure, CSI) are carried
over as quoted, with the reason.

Output formats: a long CSV with one line per cell (machine readable), and a
wide table as Markdown, CSV and LaTeX (for reading). All files are written
atomically with a JSON sidecar naming profile, git commit and parameters.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent / "resources"
PAPER_CSV = RESOURCES / "paper_tables.csv"

# dataset identifiers of mcl_core.data -> the names printed in the paper
PAPER_DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "svhn": "SVHN",
    "lsun_fix": "LSUN-Fix",
    "imagenet_fix": "ImageNet-Fix",
}

OE_REASON = (
    "quoted: Outlier Exposure trains on an auxiliary outlier set, 80 Million "
    "Tiny Images, which its authors withdrew in 2020"
)
CSI_REASON = (
    "quoted: CSI (Tack et al., 2020) is a separate method, not reimplemented "
    "here"
)
EQ19_NOTE = "not in the paper: Eq. 19-20 as printed (the paper's w-avg text)"
NOT_RUN = "not run"
NOT_PRINTED = "—"

TABLE_TITLES = {
    1: "Table 1: test accuracy and AUROC per OOD set",
    2: "Table 2: MCL vs SupCLR (ResNet-18)",
    3: "Table 3: ablation of MCL components",
    4: "Table 4: SEI ways and aggregations",
    5: "Table 5: SEI vs how the auxiliary task was trained",
}


@dataclass(frozen=True)
class RowSpec:
    """One table row: where the paper's numbers and ours come from.

    ``paper_key`` is (table, row, backbone, agg) in paper_tables.csv, or
    None when the paper prints no number for the row. ``experiment`` is
    None for quoted rows. ``scorers`` lists acceptable scorer names in order
    of preference (the first one found in metrics.json is used).
    """

    table: int
    label: str
    paper_key: tuple[str, str, str, str] | None
    experiment: str | None
    scorers: tuple[str, ...] = ("mahalanobis",)
    ways: int = 1
    agg: str = "-"
    note: str = ""
    only_if_in_profile: bool = False


def _key(table: int, row: str, backbone: str = "ResNet-34", agg: str = ""):
    return (str(table), row, backbone, agg)


_MAHA = ("mahalanobis",)
_CLS = ("msp",)
_ROT = ("rotation",)

ROW_SPECS: tuple[RowSpec, ...] = (
    # Table 1
    RowSpec(1, "Baseline", _key(1, "Baseline"), "ce", _CLS),
    RowSpec(1, "ODIN", _key(1, "ODIN"), "ce", ("odin",)),
    RowSpec(
        1,
        "Mahalanobis Distance",
        _key(1, "Mahalanobis Distance"),
        "ce",
        ("lee_mahalanobis",),
    ),
    RowSpec(1, "Auxiliary Rotation", _key(1, "Auxiliary Rotation"), "rotation",
            _ROT),
    RowSpec(1, "Outlier Exposure", _key(1, "Outlier Exposure"), None,
            note=OE_REASON),
    RowSpec(1, "SupCLR (ResNet-18 in the paper)",
            _key(1, "SupCLR", "ResNet-18"), "supclr", _MAHA),
    RowSpec(1, "CSI + SupCLR", _key(1, "CSI + SupCLR", "ResNet-18"), None,
            note=CSI_REASON),
    RowSpec(1, "CSI + SupCLR + Ensemble",
            _key(1, "CSI + SupCLR + Ensemble", "ResNet-18"), None,
            note=CSI_REASON),
    RowSpec(1, "Auxiliary Rotation + SEI",
            _key(1, "Auxiliary Rotation + SEI"), "rotation", _ROT, 8,
            "w-avg"),
    RowSpec(1, "MCL + SEI (ResNet-18)",
            _key(1, "MCL + SEI (ours)", "ResNet-18"), "mcl_r18", _MAHA, 8,
            "w-avg"),
    RowSpec(1, "MCL + SEI", _key(1, "MCL + SEI (ours)"), "mcl", _MAHA, 8,
            "w-avg"),
    RowSpec(1, "MCL + SEI (authors' released checkpoint)",
            _key(1, "MCL + SEI (ours)"), "released", _MAHA, 8, "w-avg",
            only_if_in_profile=True),
    # Table 2
    RowSpec(2, "SupCLR", _key(2, "SupCLR", "ResNet-18"), "supclr", _MAHA),
    RowSpec(2, "MCL", _key(2, "MCL", "ResNet-18"), "mcl_r18", _MAHA),
    RowSpec(2, "MCL + SEI", _key(2, "MCL + SEI", "ResNet-18"), "mcl_r18",
            _MAHA, 8, "w-avg"),
    # Table 3
    RowSpec(3, "Baseline (w/o NT-Xent)", _key(3, "Baseline (w/o NT-Xent)"),
            "ce", _CLS),
    RowSpec(3, "SimCLR (CE fine-tuned)", _key(3, "SimCLR (CE fine-tuned)"),
            "simclr_ce_ft", _CLS + _MAHA),
    RowSpec(3, "SimCLR (joint fine-tuned)",
            _key(3, "SimCLR (joint fine-tuned)"), "simclr_joint_ft",
            _CLS + _MAHA),
    RowSpec(3, "MCL (w/o SPA, w/o aux)", _key(3, "MCL (w/o SPA, w/o aux)"),
            "mcl_nospa_noaux", _MAHA),
    RowSpec(3, "MCL (w/o aux)", _key(3, "MCL (w/o aux)"), "mcl_noaux",
            _MAHA),
    RowSpec(3, "MCL (CE fine-tuned)", _key(3, "MCL (CE fine-tuned)"),
            "mcl_ce_ft", _CLS + _MAHA),
    RowSpec(3, "MCL", _key(3, "MCL"), "mcl", _MAHA),
    # Table 4
    RowSpec(4, "MCL, no SEI", _key(4, "MCL + w/o SEI", agg="-"), "mcl",
            _MAHA),
    *(
        RowSpec(4, f"MCL + {w}-way SEI, {a}",
                _key(4, f"MCL + {w}-way SEI", agg=a), "mcl", _MAHA, w, a)
        for w in (4, 8)
        for a in ("avg", "max", "w-avg")
    ),
    *(
        RowSpec(4, f"MCL + {w}-way SEI, w-avg (Eq. 19-20 as printed)", None,
                "mcl", _MAHA, w, "w-avg-eq19", note=EQ19_NOTE)
        for w in (4, 8)
    ),
    # Table 5
    RowSpec(5, "MCL w/o aux, no SEI", _key(5, "MCL + w/o Aux", agg="-"),
            "mcl_noaux", _MAHA),
    RowSpec(5, "MCL w/o aux, 8-way SEI w-avg",
            _key(5, "MCL + w/o Aux", agg="w-avg"), "mcl_noaux", _MAHA, 8,
            "w-avg"),
    RowSpec(5, "MCL + DA, no SEI", _key(5, "MCL + DA", agg="-"), "mcl_da",
            _MAHA),
    RowSpec(5, "MCL + DA, 8-way SEI w-avg", _key(5, "MCL + DA", agg="w-avg"),
            "mcl_da", _MAHA, 8, "w-avg"),
    RowSpec(5, "MCL + aux, no SEI", _key(5, "MCL + Aux", agg="-"), "mcl",
            _MAHA),
    RowSpec(5, "MCL + aux, 8-way SEI w-avg", _key(5, "MCL + Aux", agg="w-avg"),
            "mcl", _MAHA, 8, "w-avg"),
)

LONG_COLUMNS = (
    "table", "row", "source", "experiment", "scorer", "ways", "agg", "metric",
    "paper_dataset", "paper_value", "ours_dataset", "ours_value", "diff",
    "status",
)


def row_specs(table: int) -> list[RowSpec]:
    """Row mapping of one table, in the paper's order."""
    if table not in TABLE_TITLES:
        raise ValueError(f"table must be one of {sorted(TABLE_TITLES)}, "
                         f"got {table!r}")
    return [s for s in ROW_SPECS if s.table == table]


def dataset_label(name: str) -> str:
    """Name of a dataset as the paper prints it (identifiers otherwise)."""
    return PAPER_DATASET_NAMES.get(name, name)


# ---------------------------------------------------------------- reading


def load_paper_tables(path: Path | str = PAPER_CSV) -> dict[tuple, dict]:
    """Paper numbers keyed by (table, row, backbone, agg) -> {(metric, ds): v}."""
    out: dict[tuple, dict] = {}
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            key = (rec["table"], rec["row"], rec["backbone"], rec["agg"])
            cell = (rec["metric"], rec["dataset"])
            out.setdefault(key, {})[cell] = float(rec["value"])
    return out


def load_metrics(runs_dir: Path | str, profile: str) -> dict[str, dict]:
    """Every metrics.json of a profile, keyed by experiment name."""
    root = Path(runs_dir) / profile
    out = {}
    for path in sorted(root.glob("*/metrics.json")):
        with open(path) as fh:
            out[path.parent.name] = json.load(fh)
    log.info("read %d metrics files under %s", len(out), root)
    return out


def profile_datasets(metrics: Mapping[str, dict]) -> tuple[str, list[str]]:
    """IND dataset and the OOD sets (in first-seen order) of a profile."""
    ind, ood = None, []
    for m in metrics.values():
        ind = ind or m.get("ind_dataset")
        for name in m.get("ood_datasets", []):
            if name not in ood:
                ood.append(name)
    if ind is None:
        raise ValueError("metrics holds no 'ind_dataset': no experiment of "
                         "this profile has been evaluated yet")
    return ind, ood


def _percent(value: float | None) -> float | None:
    # metrics.json stores fractions; the paper prints percentages
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return 100.0 * value if abs(value) <= 1.0 else float(value)


def find_results(
    metrics: Mapping[str, Any], spec: RowSpec
) -> tuple[str | None, dict[str, dict]]:
    """Results of one row spec: (scorer used, {ood dataset: result})."""
    results = metrics.get("results", [])
    for scorer in spec.scorers:
        hits = [
            r for r in results
            if r.get("scorer") == scorer
            and int(r.get("ways", 1)) == spec.ways
            and r.get("agg", "-") == spec.agg
        ]
        if not hits:
            continue
        # official variant first when both are stored
        hits.sort(key=lambda r: r.get("variant", "official") != "official")
        by_ood: dict[str, dict] = {}
        for r in hits:
            by_ood.setdefault(r["ood"], r)
        return scorer, by_ood
    return None, {}


# --------------------------------------------------------------- building


def _ours_columns(paper_sets: list[str], ood: Sequence[str]) -> list[tuple]:
    """Pair paper OOD columns with the profile's OOD sets by dataset name."""
    ours = {dataset_label(o): o for o in ood}
    pairs = []
    for p in paper_sets:
        pairs.append((p, ours.pop(p, None)))
    pairs.extend((None, o) for o in ours.values())
    return pairs


def build_long_table(
    table: int,
    metrics: Mapping[str, dict],
    *,
    ind_dataset: str,
    ood_datasets: Sequence[str],
    experiments: Iterable[str] | None = None,
    paper: Mapping[tuple, dict] | None = None,
) -> pd.DataFrame:
    """One line per (row, metric, dataset pair) of a table; see LONG_COLUMNS.

    ``experiments`` lists the experiments the profile defines; rows marked
    ``only_if_in_profile`` are dropped when theirs is not among them.
    Values are percentages; ``diff`` = ours - paper, only where the two
    datasets are the same.
    """
    paper = load_paper_tables() if paper is None else paper
    known = set(experiments) if experiments is not None else set(metrics)
    specs = [s for s in row_specs(table)
             if not (s.only_if_in_profile and s.experiment not in known)]

    # the paper's OOD columns of this table, in printed order
    paper_sets: list[str] = []
    for s in specs:
        for metric, ds in (paper.get(s.paper_key, {}) if s.paper_key else {}):
            if metric == "auroc" and ds not in paper_sets:
                paper_sets.append(ds)
    pairs = [("test_acc", "CIFAR-10", ind_dataset)]
    pairs += [("auroc", p, o) for p, o in _ours_columns(paper_sets,
                                                        ood_datasets)]

    lines = []
    for s in specs:
        lines.extend(_spec_lines(s, metrics.get(s.experiment or ""), paper,
                                 pairs))
    return pd.DataFrame(lines, columns=list(LONG_COLUMNS))


def _spec_lines(spec, metrics, paper, pairs) -> list[dict]:
    paper_vals = paper.get(spec.paper_key, {}) if spec.paper_key else {}
    scorer, by_ood = (None, {}) if metrics is None else find_results(
        metrics, spec)
    if spec.experiment is None:
        source = spec.note
    else:
        way = "no SEI" if spec.ways == 1 else f"{spec.ways}-way {spec.agg}"
        source = f"{spec.experiment}, {scorer or spec.scorers[0]}, {way}"
        if spec.note:
            source += f"; {spec.note}"

    lines = []
    for metric, p_ds, o_ds in pairs:
        p_val = paper_vals.get((metric, p_ds)) if p_ds else None
        o_val = None
        if by_ood and o_ds is not None:
            if metric == "test_acc":
                o_val = _percent(next(iter(by_ood.values())).get("accuracy"))
            elif o_ds in by_ood:
                o_val = _percent(by_ood[o_ds].get("auroc"))
        if spec.experiment is None:
            status = "quoted"
        elif o_val is not None:
            status = "reproduced"
        elif o_ds is None:
            status = "paper only"
        else:
            status = NOT_RUN
        same = (p_ds is not None and o_ds is not None
                and dataset_label(o_ds) == p_ds)
        diff = (o_val - p_val if same and o_val is not None
                and p_val is not None else None)
        lines.append({
            "table": spec.table, "row": spec.label, "source": source,
            "experiment": spec.experiment or "", "scorer": scorer or "",
            "ways": spec.ways, "agg": spec.agg, "metric": metric,
            "paper_dataset": p_ds or "", "paper_value": p_val,
            "ours_dataset": dataset_label(o_ds) if o_ds else "",
            "ours_value": o_val, "diff": diff, "status": status,
        })
    return lines


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def wide_table(long: pd.DataFrame) -> pd.DataFrame:
    """Readable layout: per dataset column, paper | ours | difference.

    Column headers name the dataset of each value. A difference column
    appears only for a dataset that both the paper and the run used.
    """
    metric_name = {"test_acc": "Acc", "auroc": "AUROC"}
    col_order: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    sources: dict[str, str] = {}
    for rec in long.to_dict("records"):
        row = rows.setdefault(rec["row"], {})
        sources[rec["row"]] = rec["source"]
        m = metric_name[rec["metric"]]
        p_ds, o_ds = rec["paper_dataset"], rec["ours_dataset"]
        cells = []
        if p_ds:
            cells.append((f"{m} {p_ds} (paper)", _paper_cell(rec)))
        if o_ds:
            cells.append((f"{m} {o_ds} (ours)", _ours_cell(rec)))
        if p_ds and o_ds and p_ds == o_ds:
            cells.append((f"{m} {p_ds} (diff)", _fmt(rec["diff"],
                                                      signed=True)))
        for col, text in cells:
            if col not in col_order:
                col_order.append(col)
            row[col] = text
    out = pd.DataFrame.from_dict(rows, orient="index").reindex(
        columns=col_order).fillna("")
    out.insert(0, "Row", out.index)
    out["Source"] = [sources[r] for r in out.index]
    return out.reset_index(drop=True)


def _paper_cell(rec: Mapping[str, Any]) -> str:
    val = rec["paper_value"]
    return NOT_PRINTED if val is None or pd.isna(val) else _fmt(val)


def _ours_cell(rec: Mapping[str, Any]) -> str:
    if rec["status"] == "quoted":
        return "quoted"
    if rec["status"] == NOT_RUN:
        return NOT_RUN
    return _fmt(rec["ours_value"])


# ---------------------------------------------------------------- writing


def to_markdown(df: pd.DataFrame, *, title: str | None = None) -> str:
    """Pipe table (GitHub Markdown); numbers are right-aligned."""
    cols = [str(c) for c in df.columns]
    body = [[str(v) for v in rec] for rec in df.itertuples(index=False)]
    numeric = [
        all(_is_number(r[i]) for r in body if r[i] not in ("", NOT_PRINTED,
                                                            NOT_RUN, "quoted"))
        for i in range(len(cols))
    ]
    align = ["---:" if n and i > 0 else "---" for i, n in enumerate(numeric)]
    lines = [f"## {title}", ""] if title else []
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join(align) + "|")
    for r in body:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r)
                     + " |")
    return "\n".join(lines) + "\n"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_latex(df: pd.DataFrame, *, caption: str | None = None) -> str:
    """booktabs tabular of a wide table (strings escaped for LaTeX)."""
    def esc(text: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"),
                     ("_", r"\_"), ("#", r"\#"), ("—", "--")):
            text = text.replace(a, b)
        return text

    spec = "l" + "r" * (len(df.columns) - 2) + "l"
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption:
        lines.append(rf"\caption{{{esc(caption)}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
              " & ".join(esc(str(c)) for c in df.columns) + r" \\",
              r"\midrule"]
    for rec in df.itertuples(index=False):
        lines.append(" & ".join(esc(str(v)) for v in rec) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write a text file through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def git_commit(repo: Path | str | None = None) -> str:
    """Commit hash of the working tree ('+dirty' if modified; 'unknown')."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
            text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def write_sidecar(
    path: Path | str,
    *,
    profile: str,
    parameters: Mapping[str, Any],
    files: Sequence[Path | str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """JSON beside a table or figure: profile, git commit and parameters."""
    meta = {
        "profile": profile,
        "git_commit": git_commit(),
        "parameters": dict(parameters),
        "files": [Path(f).name for f in files],
    }
    meta.update(extra or {})
    return atomic_write_text(path, json.dumps(meta, indent=2, default=str)
                             + "\n")


def write_table(
    table: int,
    long: pd.DataFrame,
    out_dir: Path | str,
    *,
    profile: str,
    parameters: Mapping[str, Any],
    long_dir: Path | str | None = None,
) -> dict[str, Path]:
    """Write table<n>.md / .csv / .tex (wide), the long CSV and a sidecar."""
    out_dir = Path(out_dir)
    wide = wide_table(long)
    title = f"{TABLE_TITLES[table]} ({profile} profile)"
    stem = out_dir / f"table{table}"
    paths = {
        "md": atomic_write_text(stem.with_suffix(".md"),
                                to_markdown(wide, title=title)
                                + _footnotes(long)),
        "csv": atomic_write_text(stem.with_suffix(".csv"),
                                 wide.to_csv(index=False)),
        "tex": atomic_write_text(stem.with_suffix(".tex"),
                                 to_latex(wide, caption=title)),
    }
    long_path = Path(long_dir or out_dir) / f"table{table}_cells.csv"
    paths["cells"] = atomic_write_text(long_path, long.to_csv(index=False))
    paths["json"] = write_sidecar(
        stem.with_suffix(".json"), profile=profile, parameters=parameters,
        files=list(paths.values()), extra={"table": table, "title": title})
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def _footnotes(long: pd.DataFrame) -> str:
    notes = [
        "",
        "Values in %. `(paper)`: as printed in the paper, on the named "
        "dataset; `(ours)`: this run, on the named dataset; `(diff)`: ours - "
        "paper, only where both used the same dataset. `not run`: the "
        "profile has no metrics for that experiment; `—`: the paper prints "
        "no number.",
    ]
    quoted = sorted(set(long.loc[long.status == "quoted", "source"]))
    notes += [f"- {q}" for q in quoted]
    return "\n".join(notes) + "\n"


# ------------------------------------------------------- single-run views


def metrics_summary(metrics: Mapping[str, Any],
                    variant: str = "official") -> pd.DataFrame:
    """One line per (scorer, ways, agg): accuracy and AUROC per OOD set (%)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in metrics.get("results", []):
        if r.get("variant", "official") != variant:
            continue
        key = (r["scorer"], int(r["ways"]), r["agg"])
        row = rows.setdefault(key, {"scorer": key[0], "ways": key[1],
                                    "agg": key[2],
                                    "accuracy": _percent(r.get("accuracy"))})
        row[f"AUROC {dataset_label(r['ood'])}"] = _percent(r.get("auroc"))
    return pd.DataFrame(list(rows.values())).round(2)


def read_run_metrics(run_dir: Path | str) -> dict[str, Any]:
    """metrics.json of one run (written by notebooks/02_evaluate.ipynb)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: notebooks/02_evaluate.ipynb writes it")
    return json.loads(path.read_text())


def load_scores(run_dir: Path | str) -> dict[str, Any]:
    """Arrays of a run's scores.npz (see the run layout in the README)."""
    path = Path(run_dir) / "scores.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: notebooks/02_evaluate.ipynb writes it")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def score_arrays(scores: Mapping[str, Any], scorer: str, ways: int,
                 agg: str, dataset: str) -> tuple[Any, Any]:
    """(score, pred) arrays of one scorer on one dataset from scores.npz."""
    agg = "-" if ways == 1 else agg
    key = f"{scorer}|{ways}|{agg}|{dataset}"
    if f"{key}|score" not in scores:
        have = sorted({k.rsplit("|", 1)[0] for k in scores if "|" in k})
        raise KeyError(f"scores.npz has no {key!r}; available: {have}")
    return scores[f"{key}|score"], scores.get(f"{key}|pred")

"""Every notebook runs through run_all.sh in the smoke profile.

One module-scoped run, in three invocations sharing temporary runs/ and
figures/ folders (the repository's own folders are left alone):

1. started, then interrupted with SIGINT once its first step has finished;
2. started again: it must complete, redoing only what was not finished;
3. started a third time: every step must be skipped.

The whole smoke profile runs (every experiment and every notebook); the
CPU profiles train and evaluate all experiments in one kernel each, so a
run takes about two minutes on 2 CPU cores.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mcl_core import config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = config.experiment_order(config.get_profile("smoke"))
NOTEBOOKS = ["00_walkthrough", "03_tables", "04_figure1_tsne",
             "05_figure5_scores", "06_figure4_failures"]
FIGURES = ["figure1_tsne", "figure5_scores", "figure5_roc", "figure4_ood",
           "figure4_misclassified", "walkthrough_ccm_mask",
           "walkthrough_spa_positives", "walkthrough_sei_8way",
           "walkthrough_sei_aggregation"]

pytestmark = pytest.mark.slow


def _command(runs: Path, figures: Path) -> list[str]:
    return ["bash", str(ROOT / "run_all.sh"), "--profile", "smoke",
            "--runs", str(runs), "--figures", str(figures)]


def _env() -> dict:
    env = dict(os.environ)
    # the interpreter running the tests is the one run_all.sh should use
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    base = tmp_path_factory.mktemp("smoke")
    runs, figures = base / "runs", base / "figures"
    stamps = runs / "smoke" / ".stamps"
    cmd = _command(runs, figures)

    # 1. interrupt once the first step has finished
    first = subprocess.Popen(cmd, cwd=ROOT, env=_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    while not (stamps / "00_walkthrough").exists():
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "first step took over 400 s"
        time.sleep(0.5)
    time.sleep(2)  # let the next step start
    first.send_signal(signal.SIGINT)
    out1, _ = first.communicate(timeout=60)
    done_after_interrupt = sorted(p.name for p in stamps.iterdir())

    # 2. continue; 3. nothing left to do
    second = subprocess.run(cmd, cwd=ROOT, env=_env(), text=True,
                            capture_output=True, timeout=900)
    third = subprocess.run(cmd, cwd=ROOT, env=_env(), text=True,
                           capture_output=True, timeout=300)
    return {"runs": runs / "smoke", "figures": figures / "smoke",
            "first": (first.returncode, out1), "second": second,
            "third": third, "done_after_interrupt": done_after_interrupt}


def test_interrupted_run_stops_and_resumes(smoke):
    code, out = smoke["first"]
    assert code == 130, out
    assert "interrupted" in out
    assert "00_walkthrough" in smoke["done_after_interrupt"]
    second = smoke["second"]
    assert second.returncode == 0, second.stdout + second.stderr
    assert "-- skip 00_walkthrough" in second.stdout
    assert "== time per step" in second.stdout


def test_second_run_skips_every_step(smoke):
    third = smoke["third"]
    assert third.returncode == 0, third.stdout + third.stderr
    assert "== run " not in third.stdout
    steps = len(NOTEBOOKS) + 2 * len(EXPERIMENTS)
    assert third.stdout.count("-- skip ") == steps


def test_executed_notebooks_and_logs_are_kept(smoke):
    runs = smoke["runs"]
    for exp in EXPERIMENTS:
        for name in ("train.log", "config.json", "metrics.json", "scores.npz"):
            assert (runs / exp / name).is_file()
    # the smoke profile trains (and evaluates) all experiments in one kernel
    for name in NOTEBOOKS + ["01_train", "02_evaluate"]:
        assert (runs / "notebooks" / f"{name}.ipynb").is_file()


def test_every_figure_has_png_pdf_and_sidecar(smoke):
    for stem in FIGURES:
        for ext in ("png", "pdf", "json"):
            path = smoke["figures"] / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path


def test_tables_hold_numbers_where_runs_exist(smoke):
    for n in range(1, 6):
        for ext in ("md", "csv", "tex", "json"):
            assert (smoke["figures"] / f"table{n}.{ext}").is_file()
        cells = pd.read_csv(smoke["runs"] / "tables" / f"table{n}_cells.csv")
        ran = cells[cells.experiment.isin(EXPERIMENTS)
                    & (cells.ours_dataset.notna())]
        assert len(ran) > 0 or n in (2, 5)
        assert (ran.status == "reproduced").all(), ran
        assert ran.ours_value.notna().all()
        assert ran.ours_value.between(0, 100).all()
        other = cells[~cells.experiment.isin(EXPERIMENTS)
                      & cells.experiment.notna()
                      & cells.ours_dataset.notna()]
        assert other.status.isin(["not run"]).all()
        # smoke data are not the paper's: no difference is ever computed
        assert cells["diff"].isna().all()
    md = (smoke["figures"] / "table1.md").read_text()
    assert "80 Million Tiny Images" in md
    assert "nan" not in md.lower().replace("nanoseconds", "")


def _quick_call(tmp_path, *args):
    cmd = ["bash", str(ROOT / "run_all.sh"), "--runs", str(tmp_path / "r"),
           "--figures", str(tmp_path / "f"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), text=True,
                          capture_output=True, timeout=120)


def test_unknown_names_are_refused(tmp_path):
    out = _quick_call(tmp_path, "--profile", "smoke", "--only", "simclr_x")
    assert out.returncode == 2
    assert "'simclr_x' is neither an experiment" in out.stderr
    out = _quick_call(tmp_path, "--profile", "huge")
    assert out.returncode == 2 and "smoke, quick, paper" in out.stderr
    assert not (tmp_path / "r").exists()


def test_paper_profile_without_gpu_stops_with_estimate(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the paper profile would start")
    out = _quick_call(tmp_path, "--profile", "paper")
    assert out.returncode == 3
    assert "needs a CUDA GPU" in out.stderr
    assert "GPU-hours" in out.stdout and "mcl_r18" in out.stdout

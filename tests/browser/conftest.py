"""Fixtures for the real-browser tests: JupyterLab, Notebook 7 and Voila servers, headless Chromium.

* The browser is the system's Chromium (``apt-get install -y chromium``), or the
  one ``CHROMIUM_PATH`` names; ``playwright install`` is never needed. Without a
  browser the tests skip, unless ``CHROMIUM_REQUIRED=1`` (CI), where they fail.
* Every server listens on 127.0.0.1 on a free port, JupyterLab and Notebook with a random
  token (token auth stays on), each in a temp root with temp Jupyter
  config/data/runtime dirs, in its own process group. Teardown asks the server to
  shut down, then SIGTERM/SIGKILLs the whole group, so its kernels die with it.
* Screenshots go to ``$QVIZ_ARTIFACTS`` (default ``artifacts/`` in the repo).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]  # the artifacts' default home
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
#: seconds a server may take to answer (a loaded 2-core machine needs ~10)
SERVER_TIMEOUT = 120


@dataclass
class Server:
    """A started JupyterLab or Voila server."""

    proc: subprocess.Popen
    base_url: str
    token: str
    root: Path
    log: Path

    def url(self, path: str) -> str:
        if not self.token:
            return self.base_url + path
        return f"{self.base_url}{path}{'&' if '?' in path else '?'}token={self.token}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


def _env(home: Path) -> dict:
    """The environment of a server: Jupyter's dirs in ``home``, announcements off."""
    env = dict(os.environ)
    for key in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        (home / key.lower()).mkdir(parents=True, exist_ok=True)
        env[key] = str(home / key.lower())
    env.pop("JUPYTER_TOKEN", None)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["MPLCONFIGDIR"] = str(home / "mpl")
    labconfig = home / "jupyter_config_dir" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    return env


def _stop(srv: Server, rest_shutdown: bool) -> None:
    if rest_shutdown and srv.proc.poll() is None:
        try:  # the server stops its kernels itself
            _status(srv.url("/api/shutdown"), "POST")
            srv.proc.wait(timeout=15)
        except Exception:
            pass
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(srv.proc.pid, sig)  # the group: server and its kernels
            srv.proc.wait(timeout=wait)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # kernels may outlive the server in its group
        os.killpg(srv.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start(cmd: list[str], root: Path, home: Path, port: int, token: str, ready: str) -> Server:
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=_env(home), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    srv = Server(proc, f"http://127.0.0.1:{port}", token, root, log)
    deadline = time.monotonic() + SERVER_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[2]} exited with {proc.returncode}:\n{srv.log_tail()}")
        try:
            if _status(srv.url(ready)) == 200:
                return srv
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    _stop(srv, rest_shutdown=False)
    raise RuntimeError(f"{cmd[2]} did not answer within {SERVER_TIMEOUT} s:\n{srv.log_tail()}")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not Path(path).exists():
        msg = "no chromium (apt-get install -y chromium, or set CHROMIUM_PATH)"
        if os.environ.get("CHROMIUM_REQUIRED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    d = Path(os.environ.get("QVIZ_ARTIFACTS", REPO / "artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _jupyter(module: str, app: str, tmp_path_factory, *options: str) -> Server:
    """JupyterLab (``module="jupyterlab"``) or Notebook 7 (``"notebook"``) on a random loopback
    port with a random token, rooted in a temp dir, its app object exposed to the page."""
    home, root = tmp_path_factory.mktemp(f"{module}-home"), tmp_path_factory.mktemp(f"{module}-root")
    port, token = _free_port(), secrets.token_hex(24)
    cmd = [sys.executable, "-m", module, "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--{app}.expose_app_in_browser=True", "--MappingKernelManager.cull_idle_timeout=0", *options]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    return _start(cmd, root, home, port, token, "/api/status")


@pytest.fixture(scope="session")
def lab_server(chromium_path, tmp_path_factory):
    """JupyterLab 4 (see :func:`_jupyter`)."""
    pytest.importorskip("jupyterlab")
    srv = _jupyter("jupyterlab", "LabApp", tmp_path_factory, "--LabApp.news_url=",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    yield srv
    _stop(srv, rest_shutdown=True)


@pytest.fixture(scope="session")
def notebook_server(chromium_path, tmp_path_factory):
    """Notebook 7 (see :func:`_jupyter`)."""
    pytest.importorskip("notebook")
    srv = _jupyter("notebook", "JupyterNotebookApp", tmp_path_factory)
    yield srv
    _stop(srv, rest_shutdown=True)


@pytest.fixture(scope="session")
def voila_server(chromium_path, tmp_path_factory):
    """A factory: Voila serving one notebook on a random loopback port; all stopped at the end."""
    pytest.importorskip("voila")
    started = []

    def start(notebook: Path) -> Server:
        home, port = tmp_path_factory.mktemp("voila-home"), _free_port()
        cmd = [sys.executable, "-m", "voila", notebook.name, "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1", "--VoilaConfiguration.show_tracebacks=True"]
        srv = _start(cmd, notebook.parent, home, port, "", "/")
        started.append(srv)
        return srv

    yield start
    for srv in started:
        _stop(srv, rest_shutdown=False)  # Voila has no shutdown endpoint


@pytest.fixture(scope="session")
def browser(chromium_path, tmp_path_factory):
    """Headless Chromium with a fresh profile (persistent context: the profile dir is ours)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium_path,
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1500})
        yield ctx
        ctx.close()


@pytest.fixture
def page(browser):
    """A fresh tab; page errors and console errors are collected on ``page.errors``."""
    pg = browser.new_page()
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(f"pageerror: {exc}"))
    pg.on("console", lambda m: pg.errors.append(f"console: {m.text}") if m.type == "error" else None)
    yield pg
    pg.close()


#: ms to wait for a kernel: it starts, imports numpy, numba, plotly and quantizes
KERNEL_MS = 120_000


@pytest.fixture(scope="session")
def run_notebook():
    """``run(page, server, path, plot)``: open the notebook at ``path`` in JupyterLab or Notebook 7,
    run all its cells and wait for the element ``plot`` (a CSS selector); a traceback fails the test."""

    def run(page, srv: Server, path: str, plot: str) -> None:
        page.goto(srv.url(path), wait_until="domcontentloaded")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=KERNEL_MS)
        page.wait_for_function(
            """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                       const k = w && w.sessionContext && w.sessionContext.session
                                 && w.sessionContext.session.kernel;
                       return !!k && k.status === 'idle'; }""", timeout=KERNEL_MS)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # the plot, or a traceback (stderr that is only a warning or a progress bar is not one)
        stderr = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        page.wait_for_function(
            f"""() => !!document.querySelector("{plot}") || Array.from(
                   document.querySelectorAll("{stderr}")).some(e => /Traceback|Error/.test(e.innerText))""",
            timeout=KERNEL_MS)
        if page.locator(plot).count() == 0:
            pytest.fail("the cell failed:\n" + "\n".join(page.locator(stderr).all_inner_texts())[-3000:])

    return run


@pytest.fixture(scope="session")
def write_notebook():
    """``write(path, cells) -> path``: a notebook of code cells with the python3 kernelspec
    (Lab asks no kernel question). A fixture, so tests need not import this conftest."""
    import nbformat

    def write(path: Path, cells: list[str]) -> Path:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
        nbformat.write(nb, str(path))
        return path

    return write

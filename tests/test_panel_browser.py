"""The control panel rendered by a real JupyterLab in headless Chromium (Debian's ``chromium``, via Playwright).

Starts JupyterLab on 127.0.0.1 with a token, opens a notebook with two
``control_panel()`` cells, runs them through JupyterLab's own command, and
checks the page: the slider, the model list, the Train/Stop buttons and the red
VRAM verdict (8B at 8192 x 8) are in the DOM and "Error displaying widget" is
not. Then it clicks Train on the demo panel and waits until the progress bar,
the loss plot and the log have been updated from the training thread. A
screenshot is saved in the test's tmp dir (``panel.png``). Skipped, with the reason, when chromium,
Playwright or JupyterLab is missing, except under ``RSLORA_COLAB_REQUIRE_BROWSER=1``
(set by ``.ci/run``), where that fails. Deselect with ``-m "not browser"``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rslora_colab.notebook.panel import model_choices

pytestmark = pytest.mark.browser

BUDGET_S = 60.0
"""The whole test must finish within this (server start, kernel start, render)."""
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
"""Playwright adds --headless and a fresh --user-data-dir itself (we pass the folder)."""
REPO = Path(__file__).resolve().parents[1]
PANEL_CELL = ('from rslora_colab import control_panel\n'
              'big = control_panel("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", "demo", max_seq_length=8192,\n'
              '                    batch_size=8)\n'
              'big')
"""An 8B model at 8192 x 8: the gauge must turn red and say why."""
DEMO_CELL = ('demo = control_panel("demo", "demo", r=8, max_steps=10, batch_size=2, max_seq_length=64,\n'
             '                     output_dir="run")\n'
             'demo')
"""A demo panel whose Train button the test clicks."""


def _needs() -> str:
    """Why the test cannot run here ("" when it can)."""
    if CHROMIUM is None:
        return "no chromium on PATH (apt-get install chromium); .ci/run installs it in CI"
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"python package {module} missing (pip install -r requirements.txt)"
    return ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_notebook(path: Path) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "id": name, "metadata": {}, "outputs": [], "source": source}
             for name, source in (("big", PANEL_CELL), ("demo", DEMO_CELL))]
    notebook = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}}
    path.write_text(json.dumps(notebook))


def _wait_http(url: str, deadline: float, server: subprocess.Popen) -> None:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyterlab exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"jupyterlab did not answer {url} in time")


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free port, with its own config/runtime dirs; yields (url, token, start, process)."""
    reason = _needs()
    if reason and os.environ.get("RSLORA_COLAB_REQUIRE_BROWSER"):
        pytest.fail(f"RSLORA_COLAB_REQUIRE_BROWSER is set (CI) but {reason}")
    if reason:
        pytest.skip(reason)
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path / "jupyter"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "OMP_NUM_THREADS": "1", "RSLORA_COLAB_NO_UNSLOTH": "1"}
    _write_notebook(tmp_path / "panel.ipynb")
    quiet = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    quiet.parent.mkdir(parents=True)
    quiet.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no news toast, no web calls
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))  # every cell in the page, as a user scrolls to it
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, token, time.monotonic(), server
    finally:
        try:  # shuts the kernels down too
            request = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                             headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(request, timeout=5).close()
        except OSError:
            pass
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_control_panel_renders_and_trains_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, token, started, server = lab
    deadline = started + BUDGET_S - 5

    def left_ms() -> float:
        return max((deadline - time.monotonic()) * 1000, 1000)

    _wait_http(f"{base}/api/status?token={token}", deadline, server)
    shot = tmp_path / "panel.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1800})
        try:
            page = browser.new_page()
            page.goto(f"{base}/lab/tree/panel.ipynb?token={token}", timeout=left_ms())
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                " return k && k.status === 'idle'; }", timeout=left_ms())
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            outputs = page.locator(".jp-OutputArea-output")
            page.wait_for_selector(".jp-OutputArea-output .widget-slider >> nth=1", timeout=left_ms())
            big, demo = outputs.nth(0), outputs.nth(1)
            rendered = {"big": big.inner_text(), "sliders": big.locator(".widget-slider").count(),
                        "model": big.locator("input[list]").input_value(),
                        "choices": big.locator("datalist option").count(),
                        "buttons": {b.strip() for b in big.locator("button").all_inner_texts()}}
            page.wait_for_timeout(1500)  # a person reads first (a click within 0.5 s of a cell is ignored)
            demo.locator("button", has_text="Train").click()  # trains in the kernel's background thread
            demo.get_by_text("done:").wait_for(timeout=left_ms())
            demo.get_by_text("log", exact=True).click()
            demo.get_by_text("training r=8").wait_for(timeout=left_ms())
            plot_width = demo.locator("img").evaluate("img => img.naturalWidth")
            page.screenshot(path=str(shot), full_page=True)
            trained, whole = demo.inner_text(), page.inner_text(".jp-Notebook")
        finally:
            browser.close()
    assert "Error displaying widget" not in whole
    assert rendered["sliders"] >= 1 and {"Train", "Stop"} <= rendered["buttons"]
    assert rendered["model"] == "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"
    assert rendered["choices"] == len(model_choices())
    assert "won't fit" in rendered["big"] and "8192 x 8" in rendered["big"]  # the gauge's verdict and its reason
    assert "done at step 10/10" in trained and plot_width > 100  # progress bar, numbers and loss plot updated
    assert shot.stat().st_size > 20_000
    assert time.monotonic() - started < BUDGET_S


NOTEBOOKS = REPO / "notebooks"
USER_BUDGET_S = 420.0
"""The notebook-as-a-user test: Run all of notebook 01 (demo build when not cached, 60 steps), a Train/Stop in the
panel, then notebook 02's sweep cut to 2 ranks x 5 steps."""


def _copy_notebook(name: str, folder: Path, **parameters: str) -> str:
    """Copy a notebook into the lab's folder with some parameters-cell lines replaced (``NAME = value``)."""
    notebook = json.loads((NOTEBOOKS / name).read_text())
    cell = notebook["cells"][1]
    text = "".join(cell["source"])
    for key, value in parameters.items():
        text, found = __import__("re").subn(rf"(?m)^{key} = [^#\n]*?(\s*#)", rf"{key} = {value}\1", text)
        assert found == 1, f"{name}: no parameter {key}"
    cell["source"] = text.splitlines(keepends=True)
    (folder / name).write_text(json.dumps(notebook))
    return name


def _run_all(page, name: str, base: str, token: str, left_ms) -> None:
    page.goto(f"{base}/lab/tree/{name}?token={token}", timeout=left_ms())
    page.wait_for_function(  # this notebook's tab is the current one and its kernel is ready
        "name => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " const k = w && w.context && w.context.path === name && w.sessionContext"
        " && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return k && k.status === 'idle'; }", arg=name, timeout=left_ms())
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def _notebook_text(page) -> str:
    return page.inner_text(".jp-Notebook")


def test_notebook_01_as_a_user_run_all_then_train_then_stop(lab, tmp_path):
    """Run all, then the panel's Train, then Stop: the finished adapter stays, one progress bar a run, no library
    warnings; notebook 02's figure shows as a picture."""
    from playwright.sync_api import expect, sync_playwright

    base, token, started, server = lab
    deadline = started + USER_BUDGET_S - 5

    def left_ms() -> float:  # each wait: at most 3 minutes, within the budget
        return min(max((deadline - time.monotonic()) * 1000, 1000), 180_000)

    _wait_http(f"{base}/api/status?token={token}", deadline, server)
    first = _copy_notebook("01_quickstart_t4.ipynb", tmp_path, MAX_STEPS="60")
    sweep = _copy_notebook("02_lora_vs_rslora.ipynb", tmp_path, RANKS="(4, 64)", MAX_STEPS="5")
    adapter = tmp_path / "outputs" / "01_quickstart" / "adapter" / "adapter_model.safetensors"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1800})
        page = browser.new_page()
        try:
            _run_all(page, first, base, token, left_ms)
            train = page.locator("button", has_text="Train")
            page.get_by_text("saved adapter ->").wait_for(state="attached", timeout=left_ms())  # the last cell ran
            after_run_all = _notebook_text(page)
            trained = adapter.read_bytes()
            train_cell = page.locator(".jp-CodeCell", has_text="panel.run(")
            bars_in_train_cell = train_cell.locator(".widget-hprogress").count()
            html_bars = page.locator(".jp-OutputArea-output progress").count()  # transformers' notebook bar
            steps = page.locator(".widget-text", has_text="max steps").locator("input")
            steps.fill("2000")
            steps.press("Enter")
            page.wait_for_timeout(1500)  # a person reads before clicking (a click within 0.5 s of a cell is ignored)
            train.click()  # a new run from the panel ...
            page.get_by_text(__import__("re").compile(r"step [3-9]\d*/2000")).first.wait_for(timeout=left_ms())
            page.locator("button", has_text="Stop").click()  # ... stopped after a few steps
            page.get_by_text("done (stopped early)").wait_for(timeout=left_ms())
            panel_status = page.locator(".jp-CodeCell", has_text="control_panel(").inner_text()
            page.screenshot(path=str(tmp_path / "notebook01.png"), full_page=True)
            _run_all(page, sweep, base, token, left_ms)
            results = page.locator(".jp-CodeCell", has_text="sweep.markdown()")
            results.locator(".jp-OutputArea-output img").first.wait_for(timeout=left_ms())
            figure_width = results.locator(".jp-OutputArea-output img").first.evaluate("img => img.naturalWidth")
            sweep_text = _notebook_text(page)
        except Exception:
            page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert adapter.read_bytes() == trained  # the Run-all adapter was not replaced by the panel's run
    second = tmp_path / "outputs" / "01_quickstart-2"
    assert (second / "adapter" / "adapter_config.json").exists() and str(second) in panel_status
    assert bars_in_train_cell == 1 and html_bars == 0  # one progress bar for the run: the live view's
    for text in (after_run_all, sweep_text):
        assert "Warning" not in text and "it/s]" not in text and "examples/s" not in text
    assert "training has not started" not in after_run_all and "done at step 60/60" in after_run_all  # the panel
    assert "adapter in " + str(tmp_path / "outputs" / "01_quickstart" / "adapter") in after_run_all  # followed Run all
    assert figure_width > 400 and "<Figure size" not in sweep_text
    assert time.monotonic() - started < USER_BUDGET_S

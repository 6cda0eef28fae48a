"""Browser check of the live kit: JupyterLab + notebook 01 + the k slider, in headless Chromium.

The test starts a real JupyterLab server (127.0.0.1, free port, random token, fast mode), opens
notebooks/01_toy_linear_models.ipynb in Debian's Chromium driven by Playwright, runs all cells
from the Run menu, moves the IntSlider labelled "k" with the keyboard and asserts that the
widget's output (text and figure) changed. Screenshots land in test-artifacts/.
Chromium comes from `make browser-deps` (apt); Playwright's own browser download is never used.
"""

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT_DIR = REPO / "notebooks"
NOTEBOOK = "01_toy_linear_models.ipynb"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
KERNEL = "shared-subspace"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# A fresh user-settings dir: every cell in the DOM (no virtual scrolling), no autosave of outputs
# into the committed notebook, no news/update checks.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}
STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
SERVER_START_S, RUN_ALL_S, WIDGET_S = 60, 240, 30

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(420),
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's /usr/bin/chromium (run `make browser-deps` as root)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (dev extra)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc, url: str, log: Path, timeout: float) -> None:
    """Poll GET url until HTTP 200; fail with the server log if it dies or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop_tree(proc) -> None:
    """SIGTERM, then SIGKILL, the server's process group and every descendant (kernels run in
    their own session, so the group alone would miss them)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid)]
        family += family[0].children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        _, family = psutil.wait_procs(family, timeout=10)
        if not family:
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@pytest.fixture
def lab():
    """A JupyterLab server on notebooks/; yields (base_url, token); always torn down."""
    ARTIFACTS.mkdir(exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    log = ARTIFACTS / "jupyterlab-server.log"
    with tempfile.TemporaryDirectory(prefix="ss-lab-") as tmp:
        tmp = Path(tmp)
        for name, value in LAB_SETTINGS.items():
            f = tmp / "settings" / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        env = dict(os.environ, SHARED_SUBSPACE_FAST="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), MPLBACKEND="module://matplotlib_inline.backend_inline")
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
               f"--ServerApp.root_dir={ROOT_DIR}", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}",
               f"--LabApp.user_settings_dir={tmp / 'settings'}",
               f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
               "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(proc, f"{base}/api/status?token={token}", log, SERVER_START_S)
            yield base, token
        finally:
            stop_tree(proc)


@pytest.fixture
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(WIDGET_S * 1000)
            yield pg
        finally:
            browser.close()


def start_kernel(page, timeout_s: float) -> str:
    """Wait for an idle kernel, answering the 'Select Kernel' dialog with our kernelspec if asked."""
    dialog, idle = page.locator(".jp-Dialog"), page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if dialog.count() and dialog.first.is_visible():
            select = dialog.locator("select")
            if select.count():
                select.first.select_option(label=KERNEL)
            print(f"answered the Select Kernel dialog with {KERNEL!r}")
            dialog.locator(".jp-mod-accept").first.click()
            dialog.first.wait_for(state="detached")
        kernel = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName").first
        if idle.count() and kernel.count() and kernel.inner_text().strip() not in ("", "No Kernel"):
            return kernel.inner_text().strip()
        page.wait_for_timeout(250)
    pytest.fail(f"no idle kernel after {timeout_s} s")


def wait_all_executed(page, timeout_s: float) -> None:
    """Every code cell shows '[n]:' (none '[*]' or '[ ]') and the kernel reports idle."""
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
            const idle = document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]');
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent)) && idle;
        }""",
        timeout=timeout_s * 1000, polling=500)


# Text and image sources of the widget's output area(s): what a learner sees change with k.
OUTPUT_SIG_JS = """cell => {
    const outs = cell.querySelectorAll('.widget-output');
    const roots = outs.length ? [...outs] : [cell.querySelector('.jp-OutputArea')];
    return roots.map(r => r.innerText + [...r.querySelectorAll('img')].map(i => i.src).join('|')
                           + [...r.querySelectorAll('svg')].map(s => s.outerHTML).join('|')).join('\\n');
}"""


def has_class(name: str) -> str:
    """XPath predicate for an exact CSS class token."""
    return f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')"


def output_signature(cell) -> str:
    return cell.evaluate(OUTPUT_SIG_JS)


def settled_signature(page, cell, timeout_s: float = 10) -> str:
    """The output signature once the kernel is idle and three reads 250 ms apart agree."""
    idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    reads, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reads = (reads + [output_signature(cell)])[-3:]
        if len(reads) == 3 and len(set(reads)) == 1 and idle.count():
            break
        page.wait_for_timeout(250)
    return reads[-1]


def test_notebook01_runs_and_k_slider_updates_output(lab, page):
    base, token = lab
    committed = (ROOT_DIR / NOTEBOOK).read_bytes()
    t0 = time.monotonic()
    page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", wait_until="domcontentloaded",
              timeout=SERVER_START_S * 1000)
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=SERVER_START_S * 1000)
    kernel = start_kernel(page, SERVER_START_S)
    assert kernel == KERNEL or "Python" in kernel, f"unexpected kernel {kernel!r}"

    page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    wait_all_executed(page, RUN_ALL_S)
    t_run = time.monotonic() - t0

    errors = [t for t in page.locator(STDERR).all_inner_texts() if "Traceback" in t]
    assert not errors, "error outputs after Run All:\n" + "\n---\n".join(errors)

    label = page.locator(".widget-slider .widget-label", has_text=re.compile(r"^\s*k\s*$")).first
    label.wait_for(timeout=WIDGET_S * 1000)
    slider = label.locator(f"xpath=ancestor::div[{has_class('widget-slider')}][1]")
    cell = slider.locator(f"xpath=ancestor::div[{has_class('jp-Cell')}][1]")
    readout = slider.locator(".widget-readout")
    slider.scroll_into_view_if_needed()
    k0, before = readout.inner_text().strip(), settled_signature(page, cell)
    assert before.strip(), "the k widget has no output before moving the slider"
    ARTIFACTS.mkdir(exist_ok=True)
    cell.screenshot(path=ARTIFACTS / "browser_01_k_before.png")

    handle = slider.locator(".noUi-handle")
    at_max = float(handle.get_attribute("aria-valuenow")) >= float(handle.get_attribute("aria-valuemax"))
    handle.focus()
    for _ in range(2):
        handle.press("ArrowLeft" if at_max else "ArrowRight")
    page.wait_for_function("([r, k0]) => r.innerText.trim() !== k0",
                           arg=[readout.element_handle(), k0], timeout=WIDGET_S * 1000)
    k1 = readout.inner_text().strip()
    try:  # the area is cleared, then redrawn: wait for new, non-empty output
        page.wait_for_function(f"([c, before]) => {{ const s = ({OUTPUT_SIG_JS})(c); return s.trim() && s !== before; }}",
                               arg=[cell.element_handle(), before], timeout=WIDGET_S * 1000)
    except sync_api.TimeoutError:
        pass  # asserted below, with a clear message
    after = settled_signature(page, cell)
    cell.screenshot(path=ARTIFACTS / "browser_01_k_after.png")
    page.screenshot(path=ARTIFACTS / "browser_01_page.png", full_page=False)

    assert k1 != k0, f"k readout stayed at {k0}"
    assert after != before, "the output did not change when k moved"
    assert page.locator(STDERR, has_text="Traceback").count() == 0, "a slider move raised an exception"
    assert (ROOT_DIR / NOTEBOOK).read_bytes() == committed, "the browser session rewrote the notebook"
    print(f"browser check: kernel {kernel!r}, run-all {t_run:.1f} s, k {k0}->{k1}, total {time.monotonic() - t0:.1f} s")

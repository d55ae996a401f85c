"""The HTML report in headless Chromium: it paints, logs nothing to the console, and its script runs under the CSP."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageStat
from report_fake_run import HOSTILE, FakeRun

from auditor.report.render import run_reports
from auditor.report.sections import SECTIONS

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1280, 2000)
CONSOLE_LINE = re.compile(r":CONSOLE[:(]")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`; `make browser` installs it)"
)


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on `page` with a fresh profile and no network services; stderr carries the log."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def _console_lines(stderr: str) -> list[str]:
    """Messages the page sent to the console (errors, CSP violations, uncaught exceptions, console.*)."""
    return [line for line in stderr.splitlines() if CONSOLE_LINE.search(line) or "Uncaught" in line]


@needs_chromium
def test_report_paints_a_page_with_no_console_messages(fake_run: FakeRun, tmp_path: Path) -> None:
    index = run_reports(fake_run.store)["html"]
    screenshot = tmp_path / "report.png"
    result = _chromium(
        index, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size={},{}".format(*WINDOW)
    )
    assert screenshot.is_file(), f"no screenshot written; chromium said:\n{result.stderr[-3000:]}"
    assert _console_lines(result.stderr) == []

    with Image.open(screenshot) as image:
        assert image.format == "PNG"
        assert image.size == WINDOW
        rgb = image.convert("RGB")
    assert max(ImageStat.Stat(rgb).stddev) > 20, "screenshot is (nearly) a single colour"
    header = np.asarray(rgb.crop((0, 0, WINDOW[0], 60)))
    assert header.mean() < 80, "the dark masthead is not at the top of the page"
    assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 200, "too few colours: thumbnails did not paint"


@needs_chromium
def test_report_dom_renders_every_section_and_runs_its_script(fake_run: FakeRun, tmp_path: Path) -> None:
    index = run_reports(fake_run.store)["html"]
    result = _chromium(index, tmp_path / "profile-dom", "--dump-dom")
    dom = result.stdout
    assert "</html>" in dom, f"no DOM dumped; chromium said:\n{result.stderr[-3000:]}"
    assert _console_lines(result.stderr) == []
    for section in SECTIONS:
        if section.name not in ("gate", "fewshot"):  # fewshot: few-shot runs only
            assert f'id="{section.name}"' in dom, section.name
    assert 'tabindex="0"' in dom, "the table-sorting script did not run (CSP hash mismatch?)"
    assert HOSTILE not in dom
    assert dom.count("<img") >= 8 + 5 + 5


@needs_chromium
def test_console_capture_sees_page_errors(tmp_path: Path) -> None:
    """Guards the two tests above: a page that errors and breaks its CSP must be caught by `_console_lines`."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\">"
        "</head><body><img src='https://example.invalid/x.png'><p>x</p></body></html>",
        encoding="utf-8",
    )
    bad_script = tmp_path / "bad_script.html"
    bad_script.write_text("<!DOCTYPE html><p>x</p><script>throw new Error('boom')</script>", encoding="utf-8")
    for target in (page, bad_script):
        result = _chromium(target, tmp_path / f"profile-{target.stem}", "--dump-dom")
        assert _console_lines(result.stderr), f"console message of {target.name} not captured:\n{result.stderr[-2000:]}"

"""`dvc plots show` pages that need no network: the template generator and a real DVC run."""

from __future__ import annotations

import configparser
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, run

SCRIPT = REPO_ROOT / "scripts" / "plots_template.py"
# A <script src=...>, <link href=...>, <img src=...> (any element) that points at the network.
EXTERNAL = re.compile(r"<[a-z]+\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)


def load_script():
    spec = importlib.util.spec_from_file_location("plots_template", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "offline_plots.html"
    assert load_script().write_template(path)
    return path


def test_external_pattern_catches_cdn_tags():
    # The pattern the page tests rely on, checked on DVC's own (CDN) script tags.
    from dvc_render.vega import VegaRenderer

    assert EXTERNAL.search(VegaRenderer.SCRIPTS)
    assert not EXTERNAL.search('<img src="static/a.png"><script type="text/javascript">x()</script>')


def test_template_inlines_the_libraries_and_keeps_dvc_placeholders(template):
    page = template.read_text(encoding="utf8")
    assert page.count("{plot_divs}") == 1 and "{refresh_tag}" in page
    assert "{scripts}" not in page  # where DVC would put its CDN <script src=...> tags
    assert not EXTERNAL.search(page)
    assert "window.vegaEmbed=" in page and "window.vegaLite=" in page and "window.vega=" in page
    assert len(page) > 500_000  # the libraries themselves, not a loader
    # Exactly one inline script element: nothing in the bundle closes it early.
    assert page.lower().count("<script") == 1 and page.lower().count("</script") == 1
    assert template.stat().st_mode & 0o044 == 0o044  # readable by all, like any page


def test_writing_again_is_a_no_op_and_check_points_to_the_command(template, tmp_path, capsys):
    script = load_script()
    before = template.stat().st_mtime_ns
    assert not script.write_template(template)
    assert template.stat().st_mtime_ns == before
    assert script.main(["--check", "--out", str(template)]) == 0
    assert script.main(["--check", "--out", str(tmp_path / "missing.html")]) == 1
    message = capsys.readouterr().err
    assert "python scripts/plots_template.py" in message and "make setup" in message


def test_repository_config_points_at_the_generated_git_ignored_template():
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    configured = config["plots"]["html_template"]
    assert (REPO_ROOT / ".dvc" / configured).resolve() == load_script().TEMPLATE.resolve()
    ignored = subprocess.run(["git", "check-ignore", "-q", f".dvc/{configured}"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, "the generated template must be git-ignored"


@pytest.fixture(scope="module")
def plots_project(tmp_path_factory) -> Path:
    """A small git + DVC project with the repository's .dvc/config and a two-series TSV plot."""
    root = tmp_path_factory.mktemp("plots") / "project"
    root.mkdir()
    run(["git", "init", "-q", "-b", "main"], root)
    run(["dvc", "init", "-q"], root)
    shutil.copy2(REPO_ROOT / ".dvc" / "config", root / ".dvc" / "config")
    rows = "\n".join(f"{step}\t{6.0 - step * 0.013579:.6f}" for step in range(50))
    (root / "loss.tsv").write_text(f"step\tloss\n{rows}\n")
    (root / "dvc.yaml").write_text(
        "plots:\n"
        "  - loss.tsv:\n"
        "      x: step\n"
        "      y: loss\n"
        "      title: Offline loss curve\n"
    )
    return root


def test_dvc_plots_show_without_the_template_fails(plots_project):
    result = run(["dvc", "plots", "show"], plots_project, check=False)
    assert result.returncode != 0
    assert "{plot_divs}" in result.stdout + result.stderr  # DVC's words; the README names the fix


@pytest.fixture(scope="module")
def page(plots_project) -> Path:
    run([sys.executable, str(SCRIPT), "--out", str(plots_project / ".dvc" / "offline_plots.html")],
        plots_project)
    result = run(["dvc", "plots", "show"], plots_project)
    assert "index.html" in result.stdout
    return plots_project / "dvc_plots" / "index.html"


def test_dvc_plots_show_page_needs_no_network_and_has_the_data(page):
    html = page.read_text(encoding="utf8")
    assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)
    assert "cdn." not in html.lower()
    assert "Offline loss curve" in html
    rows = [line.split("\t") for line in (page.parents[1] / "loss.tsv").read_text().split("\n")[1:] if line]
    assert len(rows) == 50
    for step, loss in rows:  # every row of loss.tsv, as the plot's data
        assert f'"step": "{step}", "loss": "{loss}"' in html
    assert re.search(r"vegaEmbed\('#[^']+', spec\)", html)  # DVC's plot div, filled in


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs Debian's chromium (apt-get install chromium)")
def test_headless_browser_draws_the_plot_offline(page, tmp_path):
    # --dump-dom prints the DOM after the page's scripts ran: vega-embed replaces the empty plot
    # div with a drawn chart. The browser profile is fresh and its background networking off.
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)
    dom = result.stdout
    assert 'class="vega-embed' in dom and 'class="marks"' in dom, dom[-2000:]
    # The loss line itself: one path through all 50 points (M, then 49 L segments).
    lines = re.findall(r'aria-roledescription="line mark" d="(M[^"]+)"', dom)
    assert lines and max(path.count("L") for path in lines) == 49

"""Write the offline HTML template that `dvc plots show` fills (``plots.html_template``).

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so without network access
every curve is blank. ``.dvc/config`` points ``plots.html_template`` at ``.dvc/offline_plots.html``
(relative paths there are relative to ``.dvc/``); this script generates that file with the three
libraries inlined, taken from the ``vl-convert-python`` package (its bundled, version-pinned
vega / vega-lite / vega-embed build, :func:`vl_convert.javascript_bundle`). The file is
git-ignored and made by ``make setup`` (so by ``make repro`` and ``make test``); run it by hand with

    python scripts/plots_template.py            # write it (if missing or out of date)
    python scripts/plots_template.py --check    # exit 1, saying how to make it, if it is missing

The page has DVC's ``{plot_divs}`` placeholder and deliberately no ``{scripts}`` one: that is
where DVC would insert its CDN ``<script src=...>`` tags.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / ".dvc" / "offline_plots.html"
# The Vega-Lite major version of DVC's built-in templates ("$schema": .../vega-lite/v5.json): the
# newest 5.x that vl-convert bundles, so that vega-embed renders them without a version warning.
VEGA_LITE_VERSION = "5.21"
MAKE_COMMAND = "make setup   (or: python scripts/plots_template.py)"
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- vega {vega}, vega-lite {vega_lite}, vega-embed {vega_embed}: inlined from vl-convert-python
         {vl_convert} by scripts/plots_template.py, so that the page needs no network. -->
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def missing_message(path: Path = TEMPLATE) -> str:
    return (f"The offline plots template {path.name} is missing (`dvc plots show` then fails with "
            f"\"HTML template has to contain '{{plot_divs}}'\"). Make it with: {MAKE_COMMAND}")


def render_page() -> str:
    """The whole template: DVC's placeholders around the inlined JavaScript bundle."""
    try:
        import vl_convert
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise SystemExit("vl-convert-python is not installed: run `make setup` "
                         "(or pip install vl-convert-python)") from exc
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    # Inlined in a <script> element: a literal "</script" would end it early.
    bundle = bundle.replace("</script", "<\\/script")
    clashes = [p for p in PLACEHOLDERS if p in bundle]
    if clashes:  # DVC replaces these strings anywhere in the page
        raise RuntimeError(f"the JavaScript bundle contains DVC placeholders {clashes}")
    versions = {
        "vega": vl_convert.get_vega_version(),
        "vega_lite": VEGA_LITE_VERSION,
        "vega_embed": vl_convert.get_vega_embed_version(),
        "vl_convert": getattr(vl_convert, "__version__", "?"),
    }
    # str.replace, not format: the CSS braces and DVC's own placeholders stay as they are.
    page = PAGE
    for key, value in versions.items():
        page = page.replace("{" + key + "}", value)
    return page.replace("{bundle}", bundle)


def write_template(path: Path = TEMPLATE) -> bool:
    """Write the template atomically; False when an identical one is already there."""
    page = render_page()
    if path.is_file() and path.read_text(encoding="utf8") == page:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(handle, "w", encoding="utf8") as out:
            out.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a page anyone may read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the template exists")
    parser.add_argument("--out", type=Path, default=TEMPLATE, help="where to write it")
    args = parser.parse_args(argv)
    if args.check:
        if args.out.is_file():
            return 0
        print(missing_message(args.out), file=sys.stderr)
        return 1
    written = write_template(args.out)
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"{'wrote' if written else 'up to date:'} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

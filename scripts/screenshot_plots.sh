#!/usr/bin/env bash
# Screenshot the `dvc plots show` page with a headless browser, with no network, to check that
# every curve is drawn (the page must not need a CDN: see scripts/plots_template.py).
#
#   scripts/screenshot_plots.sh [PAGE.html] [OUT.png]
#
# PAGE defaults to dvc_plots/index.html (run `dvc plots show` first), OUT to plots.png. Needs
# Debian's chromium (`apt-get install -y chromium`). The browser gets a fresh throw-away profile
# and its background networking, component updates and first-run setup are off; WIDTH x HEIGHT
# (default 1200 x 3000) is the window size, so the whole page of plots fits into one picture.
set -euo pipefail

page=${1:-dvc_plots/index.html}
out=${2:-plots.png}
width=${WIDTH:-1200}
height=${HEIGHT:-3000}

if [[ ! -f "$page" ]]; then
    echo "no page at $page: run \`dvc plots show\` first (it writes dvc_plots/index.html)" >&2
    exit 1
fi
browser=""
for candidate in chromium chromium-browser; do
    if command -v "$candidate" >/dev/null 2>&1; then
        browser=$candidate
        break
    fi
done
if [[ -z "$browser" ]]; then
    echo "no chromium found: install it with \`apt-get install -y chromium\` (Debian)" >&2
    exit 1
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
page_url="file://$(cd "$(dirname "$page")" && pwd)/$(basename "$page")"
case "$out" in
    /*) target=$out ;;
    *) target="$PWD/$out" ;;
esac

# --virtual-time-budget lets the page's scripts (vega rendering) finish before the capture.
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --no-first-run --user-data-dir="$profile" \
    --hide-scrollbars --virtual-time-budget=10000 \
    --screenshot="$target" --window-size="$width,$height" "$page_url" 2>"$profile/browser.log" || {
    cat "$profile/browser.log" >&2
    exit 1
}
if [[ ! -s "$target" ]]; then
    cat "$profile/browser.log" >&2
    echo "no screenshot written to $target" >&2
    exit 1
fi
echo "wrote $target"

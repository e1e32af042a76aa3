#!/usr/bin/env bash
# Render an HTML report in headless Chromium and save a PNG screenshot, to look at it.
# Usage: scripts/screenshot_report.sh REPORT.html OUT.png [WIDTHxHEIGHT]
# Needs Debian's chromium package, and a CJK font so Chinese workspace names show (apt-get install
# -y chromium fonts-wqy-microhei). No network is used.
set -euo pipefail
html=$(realpath "$1")
out=$(realpath -m "$2")
size=${3:-1280x2400}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "screenshot_report: chromium is not installed (apt-get install -y chromium)" >&2
    exit 3
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$profile" --window-size="${size/x/,}" \
    --screenshot="$out" "file://$html" >/dev/null 2>&1
test -s "$out"
echo "$out"

#!/usr/bin/env bash
# Screenshot of an HTML page (e.g. the report) with headless Chromium, offline: scripts/screenshot.sh HTML PNG [WIDTH HEIGHT]
# Used to look at `richkd report --out DIR` as a user would, and to commit a picture of the real report under docs/.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 HTML PNG [WIDTH HEIGHT]   (default 1400 x 4000 pixels)" >&2
    exit 2
fi
html=$(realpath "$1")
png=$(realpath -m "$2")
width=${3:-1400}
height=${4:-4000}
[[ -f "$html" ]] || { echo "$0: $html not found" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[[ -n "$browser" ]] || { echo "$0: no chromium found; install it (apt-get install -y chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --window-size="$width,$height" \
    --hide-scrollbars --screenshot="$png" "file://$html" >/dev/null 2>&1
[[ -s "$png" ]] || { echo "$0: chromium wrote no screenshot to $png" >&2; exit 1; }
echo "$png"

#!/usr/bin/env bash
# Renders a report page in headless Chromium (Debian package chromium) and saves a screenshot, to
# look at what `tricaps report` wrote: scripts/report-screenshot.sh report.html report.png
set -euo pipefail
html="$(realpath "$1")"
png="${2:-${1%.html}.png}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "report-screenshot: needs chromium (apt-get install chromium)" >&2; exit 1; }
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1240,1400 --screenshot="$png" "file://$html" >/dev/null 2>&1
echo "screenshot written to $png"

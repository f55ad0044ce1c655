#!/usr/bin/env bash
# Regenerates the README's web-console screenshots from the real-browser
# test (tests/clients/web_browser.rs): headless Chromium after a real Bazel
# build writes docs/images/console-overview.png, console-action.png and
# console-explain.png.
# Needs chromium, chromium-driver and bazel-bootstrap (scripts/test.sh
# installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs/images
BAZEL_CACHE_SCREENSHOT_DIR="$PWD/docs/images" \
  cargo test --test clients -- --test-threads=1 \
    web_browser::console_in_a_real_browser_after_a_real_bazel_build \
    web_browser::explain_page_names_the_changed_source
ls -l docs/images/console-overview.png docs/images/console-action.png docs/images/console-explain.png

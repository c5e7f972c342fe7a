#!/usr/bin/env bash
# Best effort: install Debian's headless Chromium for the HTML report test (skipped without it).
command -v chromium >/dev/null 2>&1 && exit 0
[ "$(id -u)" = 0 ] || { echo "chromium not found and not root: the report's browser test will be skipped" >&2; exit 0; }
command -v apt-get >/dev/null 2>&1 || exit 0
(DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
  >/dev/null 2>&1 || echo "could not install chromium: the report's browser test will be skipped" >&2
exit 0

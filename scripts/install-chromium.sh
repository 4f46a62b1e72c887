#!/bin/sh
# Debian's chromium for the dashboard test (tests/test_monitoring.py); a no-op when
# a chromium is already on PATH.
set -e
for b in chromium chromium-browser google-chrome; do
  command -v "$b" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ]; then as_root=""; else as_root="sudo"; fi
$as_root apt-get install -y -qq chromium >/dev/null 2>&1 || {
  $as_root apt-get update -qq && $as_root apt-get install -y -qq chromium
}

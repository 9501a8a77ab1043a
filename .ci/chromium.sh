#!/usr/bin/env bash
# Headless Chromium for the static-site test (tests/test_report.py), installed from Debian's packages if missing.
#   source .ci/chromium.sh      (or run it as a program)
# Without Chromium that test is skipped with a reason; everything else runs.
_msabench_chromium() {
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: no chromium and no apt-get; tests/test_report.py will skip its browser check" >&2
    return 0
  fi
  local sudo=""
  [ "$(id -u)" = "0" ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver \
    >/dev/null || echo "chromium.sh: installing chromium failed; the browser check will be skipped" >&2
  return 0
}
_msabench_chromium
unset -f _msabench_chromium

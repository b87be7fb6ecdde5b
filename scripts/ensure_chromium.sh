#!/usr/bin/env bash
# Browser tests drive Debian's Chromium. Install it when missing and we are root;
# otherwise say why the browser tests will be skipped.
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser tests…"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null && exit 0
  echo "apt-get could not install chromium; the browser tests will be skipped." >&2
  exit 0
fi
echo "chromium is not installed and this user cannot install it (needs root and apt-get):" >&2
echo "the browser tests will be skipped. Install it with: sudo apt-get install chromium" >&2

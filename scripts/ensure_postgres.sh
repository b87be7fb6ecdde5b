#!/usr/bin/env bash
# The store's tests start their own PostgreSQL server (initdb/pg_ctl as an unprivileged user).
# Install Debian's postgresql when it is missing and we are root; otherwise say why they will skip.
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's postgresql for the store's tests…"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null && exit 0
  echo "apt-get could not install postgresql; the PostgreSQL tests will be skipped." >&2
  exit 0
fi
echo "postgresql is not installed and this user cannot install it (needs root and apt-get):" >&2
echo "the PostgreSQL tests will be skipped. Install it with: sudo apt-get install postgresql" >&2

#!/usr/bin/env bash
# Installs a Debian package the tests need when it is missing and we are root; otherwise says
# which tests will be skipped and why.
#   ensure_debian_package.sh PACKAGE "WHAT NEEDS IT" "SHELL TEST THAT IT IS PRESENT"
package="$1" needed_by="$2" present="$3"
if bash -c "$present" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's $package for $needed_by…"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "$package" >/dev/null && exit 0
  echo "apt-get could not install $package; $needed_by will be skipped." >&2
  exit 0
fi
echo "$package is not installed and this user cannot install it (needs root and apt-get):" >&2
echo "$needed_by will be skipped. Install it with: sudo apt-get install $package" >&2

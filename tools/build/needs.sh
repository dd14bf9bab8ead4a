#!/usr/bin/env bash
# What `make test` needs beyond Python: a 32-bit C toolchain (the MicroPython build), Mosquitto
# (the contract tests' broker) and PostgreSQL (the fleet database tests). As root with apt, installs
# what is missing (unless TUKAR_NO_INSTALL is set); otherwise stops at once with the one command
# that installs it.
set -u
missing=()
# Chromium: `tukar report`'s tests render its page headless; the web console's drive it (CDP).
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
printf 'int main(void){return 0;}\n' | ${CC:-cc} -m32 -x c - -o /dev/null 2>/dev/null || missing+=(gcc-multilib)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
# PostgreSQL's server programs (the fleet database tests start their own server); Debian keeps them
# in /usr/lib/postgresql/VERSION/bin, where tests/databases.py looks too.
{ command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; } \
    || compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && [ -z "${TUKAR_NO_INSTALL:-}" ] && command -v apt-get >/dev/null 2>&1; then
    echo "make: installing ${missing[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null && exit 0
fi
echo "make: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
exit 1

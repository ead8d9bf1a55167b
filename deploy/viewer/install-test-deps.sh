#!/usr/bin/env bash
# What the browser test (tests/viewer, marker `viewer`) needs; idempotent, run as root
# on Debian 12 from anywhere:
#   - Debian packages: Orthanc + its DICOMweb plugin, Chromium (the only browser used:
#     nothing downloads one), dcmtk (storescu); Node.js + npm only when there is no
#     `node` (playwright-core 1.65 wants Node >= 20; the CI machine has 20);
#   - playwright-core, pinned by tests/viewer/package-lock.json, into tests/viewer/node_modules;
#   - the prebuilt OHIF viewer (@ohif/app, pinned by version and sha512) into
#     tests/viewer/ohif/dist, without its 136 MB ONNX runtime (dist/ort), which only
#     OHIF's AI segmentation tools load.
# Both install folders are git-ignored.  Set OHIF_DIR to put the viewer elsewhere
# (deploy/viewer/README.md uses this script's fetch_ohif for a site install).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"

OHIF_VERSION=3.13.2
OHIF_SHA512="WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
OHIF_DIR="${OHIF_DIR:-$REPO/tests/viewer/ohif}"

APT_PACKAGES=(orthanc orthanc-dicomweb chromium dcmtk)
# A Node.js from another source (nodesource's bundles npm) must not be replaced.
command -v node >/dev/null && command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)

install_debian_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_playwright() {
  local dir="$REPO/tests/viewer" want have
  want=$(sed -n 's/.*"playwright-core": "\([0-9.]*\)".*/\1/p' "$dir/package.json")
  have=$(sed -n 's/.*"version": "\([0-9.]*\)".*/\1/p' "$dir/node_modules/playwright-core/package.json" 2>/dev/null || true)
  [ -n "$want" ] && [ "$want" = "$have" ] && return 0
  # playwright-core has no install script and downloads no browser.
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

fetch_ohif() {
  local dest="$1" tmp tarball sum
  [ -f "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$OHIF_VERSION" ] && [ -f "$dest/dist/index.html" ] && return 0
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && npm pack "@ohif/app@$OHIF_VERSION" --silent --loglevel=error >/dev/null)
  tarball="$tmp/ohif-app-$OHIF_VERSION.tgz"
  sum=$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)
  if [ "$sum" != "$OHIF_SHA512" ]; then
    echo "@ohif/app@$OHIF_VERSION: sha512 $sum, expected $OHIF_SHA512" >&2
    return 1
  fi
  tar -xzf "$tarball" -C "$tmp" package/dist
  rm -rf "$tmp/package/dist/ort"
  rm -rf "$dest" && mkdir -p "$dest"
  mv "$tmp/package/dist" "$dest/dist"
  echo "$OHIF_VERSION" > "$dest/VERSION"
}

if [ "${1:-}" = "--ohif-only" ]; then
  fetch_ohif "$OHIF_DIR"
  exit 0
fi
install_debian_packages
install_playwright
fetch_ohif "$OHIF_DIR"

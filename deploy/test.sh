#!/usr/bin/env bash
# The test command (README): installs what the tests need — Debian packages included —
# then runs the whole suite. Idempotent; run as root on Debian 12 with Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  dcmtk            # storescu, echoscu, storescp, dsrdump, dcmcjpeg, dcmcrle: real DICOM peers
  orthanc          # a real PACS for the delivery and end-to-end tests
  dicom3tools      # dciodvfy, dcentvfy: IOD validators
  libpixelmed-java # PixelMed DicomSRValidator
  default-jdk-headless # javac lets the PixelMed validator batch files in one JVM
  postgresql       # the index on PostgreSQL (storage and scale-out tests)
  systemd          # systemd-analyze verify of the shipped unit
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The browser test (tests/viewer): Orthanc's DICOMweb plugin, Debian's Chromium,
# playwright-core and the prebuilt OHIF viewer (pinned by version and sha512).
bash deploy/viewer/install-test-deps.sh

# torch is pinned (==2.13.0) in setup.cfg: pip takes the CPU wheel from this machine's disk.
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

exec python3 -m pytest "$@"

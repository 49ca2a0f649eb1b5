#!/usr/bin/env bash
# Install the Debian packages fedasr's corpus needs (TTS voices, text, real speech, noise), if missing.
# As root: installs them with apt-get. Otherwise: prints the one command to run and fails.
# Optional non-free voices (mbrola, SVOX pico) are NOT installed here: see README "Data licenses".
set -euo pipefail
PKGS=(sox libsox-fmt-all espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
      wordnet-base asterisk-core-sounds-en-wav asterisk-core-sounds-en sonic-pi-samples alsa-utils)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system-deps: all ${#PKGS[@]} Debian packages present"
  exit 0
fi
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  echo "system-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $cmd >/dev/null
  echo "system-deps: done"
else
  echo "system-deps: missing Debian packages: ${missing[*]}" >&2
  echo "system-deps: run as root:  apt-get update && $cmd" >&2
  exit 1
fi

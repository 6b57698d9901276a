#!/usr/bin/env bash
# The test command: installs what the suite needs on a clean Debian machine, then runs it all.
# Extra arguments go to pytest (e.g. tests/run.sh -k dashboard).
set -euo pipefail
cd "$(dirname "$0")/.."

# Browser tests drive Debian's Chromium; the compose test validates with Debian's docker-compose.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v docker-compose >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver docker-compose >/dev/null
fi
python -m pip install -q --disable-pip-version-check -r requirements.txt -r tests/requirements.txt
# Lint before the slow tests.
python -m ruff check --quiet .
python -m pytest -ra "$@"

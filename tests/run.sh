#!/usr/bin/env bash
# The test command: installs what the suite needs on a clean Debian machine, then runs it all.
# Extra arguments go to pytest (e.g. tests/run.sh -k dashboard).
set -euo pipefail
cd "$(dirname "$0")/.."

# Browser tests drive Debian's Chromium; the compose test validates with Debian's docker-compose;
# Apache Kafka and QuestDB run from Maven Central (pipeline/servers.py): Java 17+ and Maven.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python -m pip install -q --disable-pip-version-check -r requirements.txt -r tests/requirements.txt
# Fetch the servers into ~/.m2 once. Without them their tests skip saying why; under CI that fails.
python -m pipeline.servers resolve || [ "${CI:-}" != true ]
# Lint before the slow tests.
python -m ruff check --quiet .
python -m pytest -ra "$@"

#!/usr/bin/env bash
# Installs the external tools the test command uses (helm, promtool) into .bin/ if missing.
set -euo pipefail
echo "tools: nothing to install yet"

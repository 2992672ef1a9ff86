#!/usr/bin/env bash
# Fresh machine -> the main job: quantize the built-in tiny model with every scheme and print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
.venv/bin/omni-npu-quant demo "$@"

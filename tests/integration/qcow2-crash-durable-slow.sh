#!/bin/bash
# qcow2-crash-durable-slow.sh - qcow2-crash-durable.sh with 50 kills (issue 5's full count).
# meson-suite: slow
# meson-timeout: 1800
ITERATIONS=50 exec bash "$(dirname "$0")/qcow2-crash-durable.sh"

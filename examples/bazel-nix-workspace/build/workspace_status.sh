#!/usr/bin/env bash
# --workspace_status_command of the `release` config: stamped builds get the
# commit they were built from. STABLE_ keys invalidate stamped actions when
# they change; the others do not.
set -euo pipefail
echo "STABLE_GIT_COMMIT $(git rev-parse HEAD 2>/dev/null || echo unknown)"
echo "BUILD_TIMESTAMP_UTC $(date -u +%Y-%m-%dT%H:%M:%SZ)"

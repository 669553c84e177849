#!/usr/bin/env bash
# Install sluice as a systemd service on this node (run as root from the
# repository root): builds the release binary, creates the `sluice` user,
# installs the binary, a config (the quick-start one if none exists yet),
# the unit and the sysctl/limits drop-ins, then enables and starts it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $(id -u) -eq 0 ]] || { echo "install.sh: run as root" >&2; exit 1; }
cargo build --release -p sluice-edge
install -m 0755 target/release/sluice /usr/local/bin/sluice
id sluice >/dev/null 2>&1 || useradd --system --home /var/lib/sluice --shell /usr/sbin/nologin sluice
install -d -m 0750 -o root -g sluice /etc/sluice
if [[ ! -f /etc/sluice/sluice.toml ]]; then
    sed -e 's#run/audit.jsonl#/var/log/sluice/audit.jsonl#' -e 's#run/quota.redb#/var/lib/sluice/quota.redb#' \
        config/examples/quickstart.toml > /etc/sluice/sluice.toml
    chmod 0640 /etc/sluice/sluice.toml && chgrp sluice /etc/sluice/sluice.toml
fi
/usr/local/bin/sluice check-config /etc/sluice/sluice.toml
install -m 0644 deploy/sluice.service /etc/systemd/system/sluice.service
install -m 0644 deploy/sysctl.conf /etc/sysctl.d/60-sluice.conf
sysctl --system >/dev/null || true
systemctl daemon-reload
systemctl enable --now sluice
systemctl --no-pager status sluice || true

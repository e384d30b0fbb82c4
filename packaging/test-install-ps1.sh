#!/usr/bin/env bash
# Static checks of packaging/install.ps1: there is no PowerShell on our
# machines (none in Debian's archive, PyPI or npm), so it cannot run here.
# What is checked: every input of Semaphore's install.ps1 is read, its
# messages and URLs are there, the config it writes has exactly Semaphore's
# keys, the agent loads that config, brackets balance, and nothing
# evaluates strings. Not checked: that it runs (Windows only).
#
# Usage: packaging/test-install-ps1.sh [AGENT_BIN]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PS1=$HERE/install.ps1
BIN=${1:-}
failed=0
pass() { echo "PASS install.ps1: $*"; }
fail() { echo "FAIL install.ps1: $*"; failed=1; }
for v in SemaphoreEndpoint SemaphoreOrganization SemaphoreRegistrationToken SemaphoreAgentDisconnectAfterJob \
    SemaphoreAgentDisconnectAfterIdleTimeout SemaphoreAgentShutdownHook SemaphoreToolboxVersion \
    SemaphoreToolboxTarball SemaphoreToolboxSha256 SemaphoreAgentInstallToolbox; do
    grep -q "env:$v" "$PS1" && pass "reads \$env:$v" || fail "does not read \$env:$v"
done
for m in 'Either $env:SemaphoreOrganization or $env:SemaphoreEndpoint needs to be specified. Exiting...' \
    'Registration token cannot be empty, set $env:SemaphoreRegistrationToken. Exiting...' \
    'https://github.com/semaphoreci/toolbox/releases/download/$env:SemaphoreToolboxVersion/self-hosted-windows.tar' \
    'https://github.com/semaphoreci/toolbox/releases/latest/download/self-hosted-windows.tar' \
    'install-toolbox.ps1' 'HTTP status $Status' 'Get-FileHash -Algorithm SHA256' \
    '> Successfully installed the agent in $InstallationDirectory.' 'agent.exe start --config-file $AgentConfigPath'; do
    grep -qF -- "$m" "$PS1" && pass "has: $m" || fail "lacks: $m"
done
if grep -nE 'Invoke-Expression|iex |ConvertTo-SecureString|-EncodedCommand' "$PS1"; then
    fail "evaluates strings"
else
    pass "evaluates no strings (no Invoke-Expression)"
fi
python3 - "$PS1" "$BIN" <<'PY'
import re, subprocess, sys, tempfile, os
text = open(sys.argv[1]).read()
# Brackets balance outside comments (strings here hold balanced ones).
code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
for o, c in ("{}", "()", "[]"):
    assert code.count(o) == code.count(c), f"{o}{c}: {code.count(o)} vs {code.count(c)}"
# The config here-string, with sample values put in.
m = re.search(r'\$AgentConfig = @"\n(.*?)\n"@', text, re.S)
assert m, "no config here-string"
body = m.group(1)
body = body.replace("$(Quote-Yaml $SemaphoreEndpoint)", "'127.0.0.1:9'")
body = body.replace("$(Quote-Yaml $env:SemaphoreRegistrationToken)", "'it''s a token'")
body = body.replace("$(Quote-Yaml $ShutdownHook)", "''")
body = body.replace("$DisconnectAfterJob", "false").replace("$DisconnectAfterIdleTimeout", "0")
assert "$" not in body, body
import yaml
c = yaml.safe_load(body)
go = ["endpoint", "token", "no-https", "shutdown-hook-path", "disconnect-after-job",
      "disconnect-after-idle-timeout", "env-vars", "files", "fail-on-missing-files"]
assert list(c) == go, list(c)
assert c["token"] == "it's a token"
print("PASS install.ps1: brackets balance; config.yaml has exactly Semaphore's keys, in order")
bin = sys.argv[2]
if bin:
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "config.yaml")
        open(cfg, "w").write(body.replace("no-https: false", "no-https: true"))
        try:
            r = subprocess.run([bin, "start", "--config-file", cfg], capture_output=True, text=True, timeout=3,
                               env={"PATH": "/usr/bin:/bin", "HOME": d, "SEMAPHORE_AGENT_LOG_FILE_PATH": os.path.join(d, "a.log")})
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = None  # still retrying registration: the config loaded
        assert rc != 2, f"agent refused the install.ps1 config (exit 2)"
        print(f"PASS install.ps1: the agent loads the config it writes (exit {rc}, not a config error)")
PY
[ $failed = 0 ] || exit 1

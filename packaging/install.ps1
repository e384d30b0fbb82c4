# Installs semaphore-agent on Windows: writes config.yaml beside this script
# (and semaphore-agent.exe), readable by the current user, SYSTEM and
# Administrators only, and prints how to start the agent.
#
# Inputs, as environment variables (the Go agent's installer takes the same):
#   SemaphoreEndpoint                        e.g. "myorg.semaphoreci.com", or
#   SemaphoreOrganization                    "myorg" (endpoint = myorg.semaphoreci.com)
#   SemaphoreRegistrationToken               required
#   SemaphoreAgentDisconnectAfterJob         "true" or "false" (default false)
#   SemaphoreAgentDisconnectAfterIdleTimeout seconds, 0 = never (default 0)
#   SemaphoreAgentShutdownHook               path of a .ps1 run on shutdown (optional)
#
# Unlike the Go installer it downloads nothing (no toolbox) and installs no
# service; README.md ("Windows") shows how to run the agent as one.
$ErrorActionPreference = "Stop"
$InstallationDirectory = $PSScriptRoot

function Fail($Message) {
  Write-Warning $Message
  Exit 1
}

# YAML single-quoted scalar: nothing is special inside but ', written twice.
function Quote-Yaml($Value) {
  return "'" + ($Value -replace "'", "''") + "'"
}

if ($env:SemaphoreEndpoint) {
  $Endpoint = $env:SemaphoreEndpoint
} elseif ($env:SemaphoreOrganization) {
  $Endpoint = "$env:SemaphoreOrganization.semaphoreci.com"
  Write-Output "> SemaphoreEndpoint not set, using '$Endpoint'"
} else {
  Fail 'Set $env:SemaphoreEndpoint or $env:SemaphoreOrganization. Exiting...'
}

if (-not $env:SemaphoreRegistrationToken) {
  Fail 'The registration token cannot be empty: set $env:SemaphoreRegistrationToken. Exiting...'
}

$DisconnectAfterJob = "false"
if ($env:SemaphoreAgentDisconnectAfterJob) {
  $DisconnectAfterJob = $env:SemaphoreAgentDisconnectAfterJob.ToLowerInvariant()
  if ($DisconnectAfterJob -ne "true" -and $DisconnectAfterJob -ne "false") {
    Fail "SemaphoreAgentDisconnectAfterJob must be true or false, not '$env:SemaphoreAgentDisconnectAfterJob'. Exiting..."
  }
}

$DisconnectAfterIdleTimeout = "0"
if ($env:SemaphoreAgentDisconnectAfterIdleTimeout) {
  $DisconnectAfterIdleTimeout = $env:SemaphoreAgentDisconnectAfterIdleTimeout
  if ($DisconnectAfterIdleTimeout -notmatch '^[0-9]+$') {
    Fail "SemaphoreAgentDisconnectAfterIdleTimeout must be a whole number of seconds, not '$DisconnectAfterIdleTimeout'. Exiting..."
  }
}

$ShutdownHook = ""
if ($env:SemaphoreAgentShutdownHook) {
  $ShutdownHook = $env:SemaphoreAgentShutdownHook
  if (-not (Test-Path -LiteralPath $ShutdownHook -PathType Leaf)) {
    Fail "The shutdown hook '$ShutdownHook' does not exist. Exiting..."
  }
}

$Agent = Join-Path $InstallationDirectory "semaphore-agent.exe"
if (-not (Test-Path -LiteralPath $Agent -PathType Leaf)) {
  Fail "$Agent not found: put install.ps1 beside semaphore-agent.exe. Exiting..."
}

$Config = @"
endpoint: $(Quote-Yaml $Endpoint)
token: $(Quote-Yaml $env:SemaphoreRegistrationToken)
no-https: false
shutdown-hook-path: $(Quote-Yaml $ShutdownHook)
disconnect-after-job: $DisconnectAfterJob
disconnect-after-idle-timeout: $DisconnectAfterIdleTimeout
env-vars: []
files: []
fail-on-missing-files: false
"@

$ConfigPath = Join-Path $InstallationDirectory "config.yaml"
if (Test-Path -LiteralPath $ConfigPath) {
  Write-Output "> $ConfigPath exists. Overwriting it..."
}

# Create the file empty, lock it down, then write the token into it, so the
# token is never readable by others, not even for a moment. The agent's
# user, SYSTEM and Administrators keep access; inherited rules go.
[System.IO.File]::WriteAllText($ConfigPath, "")
& icacls.exe $ConfigPath /inheritance:r /grant:r "$($env:USERNAME):(R,W)" "*S-1-5-18:(F)" "*S-1-5-32-544:(F)" | Out-Null
if ($LASTEXITCODE -ne 0) {
  Remove-Item -LiteralPath $ConfigPath -Force
  Fail "Could not restrict access to $ConfigPath (icacls exit code $LASTEXITCODE). Exiting..."
}
# UTF-8 without a BOM, which every YAML reader takes.
[System.IO.File]::WriteAllText($ConfigPath, $Config, (New-Object System.Text.UTF8Encoding $false))

Write-Output "> Wrote $ConfigPath (readable by $env:USERNAME, SYSTEM and Administrators only)."
Write-Output "
  Start the agent with:
    & '$Agent' start --config-file '$ConfigPath'
"

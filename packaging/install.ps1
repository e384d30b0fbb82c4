# Installs semaphore-agent on Windows the way Semaphore's own install.ps1
# does, from agent_Windows_x86_64.tar.gz unpacked into a directory of its
# own (the AWS stack's AMIs use C:\semaphore-agent): writes config.yaml
# beside this script and agent.exe, installs the toolbox into
# $HOME\.toolbox (its install-toolbox.ps1 puts the Checkout module on
# PSModulePath and $HOME\.toolbox\bin on the user's PATH), and prints how to
# start the agent.
#
# Inputs, as environment variables (Semaphore's installer takes the same):
#   SemaphoreEndpoint                        e.g. "myorg.semaphoreci.com", or
#   SemaphoreOrganization                    "myorg" (endpoint = myorg.semaphoreci.com)
#   SemaphoreRegistrationToken               required
#   SemaphoreAgentDisconnectAfterJob         "true" or "false" (default false)
#   SemaphoreAgentDisconnectAfterIdleTimeout seconds, 0 = never (default 0)
#   SemaphoreAgentShutdownHook               path of a script run on shutdown (optional)
#   SemaphoreToolboxVersion                  toolbox release tag (default: the latest)
# Where it differs from Semaphore's, on purpose:
#   SemaphoreToolboxTarball   a path or URL of self-hosted-windows.tar (hosts
#                             without internet), checked against
#   SemaphoreToolboxSha256    when that is set;
#   SemaphoreAgentInstallToolbox = "false" installs no toolbox;
#   a toolbox that cannot be fetched fails the install, naming the URL and
#   the HTTP status (nothing is written then); config.yaml is readable by
#   the current user, SYSTEM and Administrators only (it holds the token);
#   a second run with the same inputs changes nothing.
$ProgressPreference = 'SilentlyContinue'
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

#
# The inputs, checked before anything is written
#
if (Test-Path env:SemaphoreEndpoint) {
  $SemaphoreEndpoint = $env:SemaphoreEndpoint
} else {
  if (-not (Test-Path env:SemaphoreOrganization)) {
    Fail 'Either $env:SemaphoreOrganization or $env:SemaphoreEndpoint needs to be specified. Exiting...'
  }
  $SemaphoreEndpoint = "$env:SemaphoreOrganization.semaphoreci.com"
  Write-Warning "`$env:SemaphoreEndpoint not set, using '$SemaphoreEndpoint'"
}

if (-not $env:SemaphoreRegistrationToken) {
  Fail 'Registration token cannot be empty, set $env:SemaphoreRegistrationToken. Exiting...'
}

$DisconnectAfterJob = "false"
if (Test-Path env:SemaphoreAgentDisconnectAfterJob) {
  $DisconnectAfterJob = $env:SemaphoreAgentDisconnectAfterJob.ToLowerInvariant()
  if ($DisconnectAfterJob -ne "true" -and $DisconnectAfterJob -ne "false") {
    Fail "SemaphoreAgentDisconnectAfterJob must be true or false, not '$env:SemaphoreAgentDisconnectAfterJob'. Exiting..."
  }
}

$DisconnectAfterIdleTimeout = "0"
if (Test-Path env:SemaphoreAgentDisconnectAfterIdleTimeout) {
  $DisconnectAfterIdleTimeout = $env:SemaphoreAgentDisconnectAfterIdleTimeout
  if ($DisconnectAfterIdleTimeout -notmatch '^[0-9]+$') {
    Fail "SemaphoreAgentDisconnectAfterIdleTimeout must be a whole number of seconds, not '$DisconnectAfterIdleTimeout'. Exiting..."
  }
}

$ShutdownHook = ""
if ($env:SemaphoreAgentShutdownHook) {
  $ShutdownHook = $env:SemaphoreAgentShutdownHook
  if (-not (Test-Path -LiteralPath $ShutdownHook -PathType Leaf)) {
    Write-Warning "The shutdown hook '$ShutdownHook' does not exist (yet)."
  }
}

$InstallToolbox = $true
if ($env:SemaphoreAgentInstallToolbox) {
  if ($env:SemaphoreAgentInstallToolbox -eq "false") {
    $InstallToolbox = $false
  } elseif ($env:SemaphoreAgentInstallToolbox -ne "true") {
    Fail "SemaphoreAgentInstallToolbox must be true or false, not '$env:SemaphoreAgentInstallToolbox'. Exiting..."
  }
}
$WantSha256 = ""
if ($env:SemaphoreToolboxSha256) {
  $WantSha256 = $env:SemaphoreToolboxSha256.ToLowerInvariant()
  if ($WantSha256 -notmatch '^[0-9a-f]{64}$') {
    Fail "SemaphoreToolboxSha256 must be 64 hex digits, not '$env:SemaphoreToolboxSha256'. Exiting..."
  }
}

$Agent = Join-Path $InstallationDirectory "agent.exe"
if (-not (Test-Path -LiteralPath $Agent -PathType Leaf)) {
  Fail "$Agent not found: unpack agent_Windows_x86_64.tar.gz here and run install.ps1 from it. Exiting..."
}

#
# The toolbox: fetched and checked first, so a failure leaves nothing behind
#
$ToolboxDirectory = Join-Path $HOME ".toolbox"
$Marker = Join-Path $ToolboxDirectory ".tarball-sha256"
$Tarball = Join-Path ([System.IO.Path]::GetTempPath()) ("semaphore-toolbox-" + [guid]::NewGuid() + ".tar")

# Messages go to the host: this function's output is its return value.
function Get-Toolbox {
  if ($env:SemaphoreToolboxTarball) {
    $Source = $env:SemaphoreToolboxTarball
  } elseif ($env:SemaphoreToolboxVersion) {
    $Source = "https://github.com/semaphoreci/toolbox/releases/download/$env:SemaphoreToolboxVersion/self-hosted-windows.tar"
  } else {
    Write-Host '> $env:SemaphoreToolboxVersion is not set. Using the latest toolbox...'
    $Source = "https://github.com/semaphoreci/toolbox/releases/latest/download/self-hosted-windows.tar"
  }
  if ($Source -match '^https?://') {
    Write-Host "> Downloading toolbox from $Source..."
    try {
      Invoke-WebRequest -UseBasicParsing -Uri $Source -OutFile $Tarball
    } catch {
      $Status = $null
      if ($_.Exception.Response) { $Status = [int]$_.Exception.Response.StatusCode }
      if ($Status) {
        Fail "Cannot download the toolbox from ${Source}: HTTP status $Status. Exiting..."
      }
      Fail "Cannot download the toolbox from ${Source}: $($_.Exception.Message). Exiting..."
    }
  } else {
    $Path = $Source -replace '^file://', ''
    if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) {
      Fail "SemaphoreToolboxTarball: no such file $Path. Exiting..."
    }
    Write-Host "> Using toolbox tarball $Path..."
    Copy-Item -LiteralPath $Path -Destination $Tarball
  }
  $Got = (Get-FileHash -Algorithm SHA256 -LiteralPath $Tarball).Hash.ToLowerInvariant()
  if ($WantSha256 -and $Got -ne $WantSha256) {
    Remove-Item -LiteralPath $Tarball -Force
    Fail "The toolbox from $Source has sha256 $Got, but SemaphoreToolboxSha256 is $WantSha256. Exiting..."
  }
  $Listing = & tar.exe -tf $Tarball
  if ($LASTEXITCODE -ne 0 -or -not ($Listing -contains "toolbox/install-toolbox.ps1")) {
    Remove-Item -LiteralPath $Tarball -Force
    Fail "The toolbox from $Source has no toolbox/install-toolbox.ps1: not a self-hosted-windows.tar. Exiting..."
  }
  if ($Listing | Where-Object { $_ -notmatch '^toolbox(/|$)' -or $_ -match '(^|/)\.\.(/|$)' }) {
    Remove-Item -LiteralPath $Tarball -Force
    Fail "The toolbox from $Source holds paths outside toolbox/. Exiting..."
  }
  return @{ Source = $Source; Sha256 = $Got }
}

function Install-Toolbox($Fetched) {
  Write-Output "> Toolbox will be installed at $ToolboxDirectory."
  if ((Test-Path -LiteralPath $Marker) -and ((Get-Content -LiteralPath $Marker -Raw).Trim() -eq $Fetched.Sha256)) {
    Write-Output "> Toolbox from $($Fetched.Source) (sha256 $($Fetched.Sha256)) is already installed at $ToolboxDirectory."
    return
  }
  if (Test-Path -LiteralPath $ToolboxDirectory) {
    Write-Output "> Toolbox already installed at $ToolboxDirectory. Overriding it..."
    Remove-Item -LiteralPath $ToolboxDirectory -Force -Recurse
  }
  $Staging = Join-Path $HOME (".toolbox-new-" + [guid]::NewGuid())
  New-Item -ItemType Directory -Path $Staging > $null
  & tar.exe -xf $Tarball -C $Staging
  if ($LASTEXITCODE -ne 0) {
    Remove-Item -LiteralPath $Staging -Force -Recurse
    Fail "Could not unpack the toolbox (tar.exe exit code $LASTEXITCODE). Exiting..."
  }
  Move-Item -LiteralPath (Join-Path $Staging "toolbox") -Destination $ToolboxDirectory
  Remove-Item -LiteralPath $Staging -Force -Recurse
  [System.IO.File]::WriteAllText($Marker, $Fetched.Sha256)
  Write-Output "> Installing toolbox..."
  # install-toolbox.ps1 puts the Checkout module on PSModulePath and
  # $HOME\.toolbox\bin on the user's PATH (once: it drops an old entry).
  $global:LASTEXITCODE = 0
  & (Join-Path $ToolboxDirectory "install-toolbox.ps1")
  if ($LASTEXITCODE -ne 0) {
    Fail "The toolbox's install-toolbox.ps1 failed (exit code $LASTEXITCODE). Exiting..."
  }
}

$Fetched = $null
if ($InstallToolbox) {
  $Fetched = Get-Toolbox
} else {
  Write-Output "> SemaphoreAgentInstallToolbox is false: not installing the toolbox."
}

#
# The agent's config: Semaphore's keys
#
$AgentConfig = @"
endpoint: $(Quote-Yaml $SemaphoreEndpoint)
token: $(Quote-Yaml $env:SemaphoreRegistrationToken)
no-https: false
shutdown-hook-path: $(Quote-Yaml $ShutdownHook)
disconnect-after-job: $DisconnectAfterJob
disconnect-after-idle-timeout: $DisconnectAfterIdleTimeout
env-vars: []
files: []
fail-on-missing-files: false
"@ -replace "`r`n", "`n"

try {
  if ($Fetched) { Install-Toolbox $Fetched }
} finally {
  if (Test-Path -LiteralPath $Tarball) { Remove-Item -LiteralPath $Tarball -Force }
}

$AgentConfigPath = Join-Path $InstallationDirectory "config.yaml"
$Unchanged = (Test-Path -LiteralPath $AgentConfigPath) -and
  ([System.IO.File]::ReadAllText($AgentConfigPath) -ceq $AgentConfig)
if ($Unchanged) {
  Write-Output "> Agent configuration file $AgentConfigPath is unchanged."
} else {
  if (Test-Path -LiteralPath $AgentConfigPath) {
    Write-Output "> Agent configuration file already exists in $AgentConfigPath. Overriding it..."
  }
  # Create the file empty, lock it down, then write the token into it, so
  # the token is never readable by others, not even for a moment. The
  # agent's user, SYSTEM and Administrators keep access; inherited rules go.
  $Staged = "$AgentConfigPath.new"
  [System.IO.File]::WriteAllText($Staged, "")
  & icacls.exe $Staged /inheritance:r /grant:r "$($env:USERNAME):(R,W,D)" "*S-1-5-18:(F)" "*S-1-5-32-544:(F)" | Out-Null
  if ($LASTEXITCODE -ne 0) {
    Remove-Item -LiteralPath $Staged -Force
    Fail "Could not restrict access to $Staged (icacls exit code $LASTEXITCODE). Exiting..."
  }
  # UTF-8 without a BOM, which every YAML reader takes.
  [System.IO.File]::WriteAllText($Staged, $AgentConfig, (New-Object System.Text.UTF8Encoding $false))
  if (Test-Path -LiteralPath $AgentConfigPath) { Remove-Item -LiteralPath $AgentConfigPath -Force }
  Move-Item -LiteralPath $Staged -Destination $AgentConfigPath
  Write-Output "> Wrote $AgentConfigPath (readable by $env:USERNAME, SYSTEM and Administrators only)."
}

Write-Output "> Successfully installed the agent in $InstallationDirectory."
Write-Output "
  Start the agent with: $InstallationDirectory\agent.exe start --config-file $AgentConfigPath
"

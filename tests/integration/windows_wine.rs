//! `semaphore-agent.exe` (cross-built by `packaging/build-windows.sh`) under
//! wine against the fake control plane.
//!
//! What this proves: the Windows build starts and prints its version;
//! `start` registers as Windows (`RtlGetVersion`), runs jobs through the
//! PowerShell executor (script file, Job Object, output pipe, state carried
//! between commands, env vars, files with a read-only mode, the job
//! result), pushes their logs without a gap, stops a running job, and shuts
//! down when the control plane asks.
//!
//! What it does not: real PowerShell. Wine's `powershell.exe` is a stub that
//! runs nothing, so the jobs run under a STAND-IN, `tests/support/wine/
//! powershell-standin.c`, built here with mingw and put first on the job's
//! `PATH`: it checks the arguments, the BOM and the agent's script
//! template, runs a handful of commands (`Write-Output`, `$env:X = "v"`,
//! `Set-Location`, `Get-Location`, `Start-Sleep`, `exit`) and writes the
//! state dump as the real trailer would.
//!
//! Also built here: the `bcryptprimitives.dll` shim (packaging/windows/)
//! that gives wine 8 the `ProcessPrng` Rust's std needs. Needs wine64,
//! mingw-w64 gcc and the .exe (`SEMAPHORE_AGENT_WINDOWS_EXE`, else
//! `target/windows/x86_64-pc-windows-gnu/release/semaphore-agent.exe`);
//! without them the tests print why and pass, except with `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::hub::{Hub, REGISTRATION_TOKEN};
use crate::support::{b64, job, procs, Sandbox};

/// Wine is slow to start processes (a second or more each); every wait
/// here is bounded by this instead of `support::WAIT`.
const WAIT: Duration = Duration::from_secs(90);
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// The parts the tests need, or why they are missing.
struct Wine {
    wine: PathBuf,
    exe: PathBuf,
    prefix: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn find_parts() -> Result<Wine, String> {
    let wine = on_path("wine64")
        .or_else(|| Some(PathBuf::from("/usr/lib/wine/wine64")).filter(|p| p.is_file()))
        .ok_or("wine64 is not installed (Debian: apt-get install wine64)")?;
    on_path(MINGW_GCC)
        .ok_or("mingw-w64 gcc is not installed (Debian: apt-get install gcc-mingw-w64-x86-64)")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::var_os("SEMAPHORE_AGENT_WINDOWS_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root.join("target/windows/x86_64-pc-windows-gnu/release/semaphore-agent.exe")
        });
    if !exe.is_file() {
        return Err(format!(
            "{} is missing (build it with packaging/build-windows.sh)",
            exe.display()
        ));
    }
    Ok(Wine {
        wine,
        exe,
        prefix: root.join("target/windows/wineprefix"),
    })
}

/// The parts, or `None` after printing why the test is skipped; with
/// `CI=true` a missing part fails the test.
fn parts_or_skip(test: &str) -> Option<Wine> {
    match find_parts() {
        Ok(parts) => Some(parts),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: CI=true but {why}")
        }
        Err(why) => {
            eprintln!("{test}: SKIPPED: {why}");
            None
        }
    }
}

/// `Z:\...`: how a Linux path looks to a Windows program under wine.
fn dos_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

fn gcc(args: &[&str]) {
    let out = Command::new(MINGW_GCC)
        .args(args)
        .output()
        .expect("run mingw gcc");
    assert!(
        out.status.success(),
        "{MINGW_GCC} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One sandbox with the .exe, the DLL shim beside it and the stand-in.
struct Setup {
    sandbox: Sandbox,
    wine: Wine,
}

impl Setup {
    fn new(wine: Wine) -> Setup {
        let sandbox = Sandbox::new();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let bin = sandbox.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(&wine.exe, bin.join("semaphore-agent.exe")).expect("copy the .exe");
        let shim = root.join("packaging/windows");
        gcc(&[
            "-O2",
            "-shared",
            "-o",
            bin.join("bcryptprimitives.dll").to_str().unwrap(),
            shim.join("bcryptprimitives.c").to_str().unwrap(),
            shim.join("bcryptprimitives.def").to_str().unwrap(),
            "-ladvapi32",
        ]);
        let standin = sandbox.path("standin");
        std::fs::create_dir_all(&standin).unwrap();
        gcc(&[
            "-O2",
            "-o",
            standin.join("powershell.exe").to_str().unwrap(),
            root.join("tests/support/wine/powershell-standin.c")
                .to_str()
                .unwrap(),
        ]);
        let setup = Setup { sandbox, wine };
        setup.init_prefix();
        setup
    }

    /// The wine command for the agent, with a cleared environment: the
    /// shared prefix under target/, a private HOME, the stand-in first on
    /// the Windows PATH.
    fn agent(&self) -> Command {
        let mut cmd = Command::new(&self.wine.wine);
        cmd.arg(self.sandbox.path("bin/semaphore-agent.exe"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.sandbox.home())
            .env("WINEPREFIX", &self.wine.prefix)
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env("WINEPATH", dos_path(&self.sandbox.path("standin")))
            .env(
                "SEMAPHORE_AGENT_LOG_FILE_PATH",
                dos_path(&self.sandbox.path("agent_log")),
            )
            .current_dir(self.sandbox.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Creates the wine prefix once for all tests (it takes ~30 s).
    fn init_prefix(&self) {
        static PREFIX: Mutex<()> = Mutex::new(());
        let _guard = PREFIX.lock().unwrap_or_else(|e| e.into_inner());
        if self.wine.prefix.join("system.reg").is_file() {
            return;
        }
        std::fs::create_dir_all(&self.wine.prefix).unwrap();
        let mut child = Command::new(&self.wine.wine)
            .args(["wineboot", "-i"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.sandbox.home())
            .env("WINEPREFIX", &self.wine.prefix)
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run wineboot");
        let status = wait_child(&mut child, Duration::from_secs(180));
        assert_eq!(status, Some(0), "wineboot failed");
        // wineboot returns before the wine server wrote the registry out;
        // `wineserver -w` waits for that.
        let server = self.wine.wine.with_file_name("wineserver");
        let mut child = Command::new(if server.is_file() {
            server
        } else {
            PathBuf::from("wineserver")
        })
        .arg("-w")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", self.sandbox.home())
        .env("WINEPREFIX", &self.wine.prefix)
        .spawn()
        .expect("run wineserver -w");
        let status = wait_child(&mut child, Duration::from_secs(60));
        assert!(
            status == Some(0) && self.wine.prefix.join("system.reg").is_file(),
            "wineboot did not create the prefix (wineserver -w: {status:?})"
        );
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.sandbox.path("agent_log")).unwrap_or_default()
    }
}

/// The child's exit code within `timeout`; killed and `None` after it.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the agent if a test ends early, and prints its log on failure.
struct Running<'a> {
    setup: &'a Setup,
    child: Child,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- agent log ----\n{}---- stdout/stderr ----\n{}{}",
                self.setup.agent_log(),
                std::fs::read_to_string(self.setup.sandbox.path("stdout")).unwrap_or_default(),
                std::fs::read_to_string(self.setup.sandbox.path("stderr")).unwrap_or_default(),
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_exe_prints_its_version_under_wine() {
    let Some(wine) = parts_or_skip("the_exe_prints_its_version_under_wine") else {
        return;
    };
    let setup = Setup::new(wine);
    let mut child = setup
        .agent()
        .arg("version")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the .exe under wine");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout }, &mut text);
        text
    });
    let code = wait_child(&mut child, WAIT);
    let out = reader.join().unwrap();
    assert_eq!(code, Some(0), "stdout: {out}");
    assert_eq!(out.trim_end(), env!("CARGO_PKG_VERSION"));
}

fn finished_exit_codes(hub: &Hub, id: &str) -> Vec<(String, i64)> {
    hub.events(id)
        .iter()
        .filter(|e| e["event"] == "cmd_finished")
        .map(|e| {
            (
                e["directive"].as_str().unwrap_or("").to_string(),
                e["exit_code"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// The job commands still running: wine runs each Windows program as a
/// Linux process whose command line is the Windows one.
fn powershells() -> Vec<String> {
    procs::running_containing("powershell.exe")
        .into_iter()
        .map(|p| p.cmdline)
        .collect()
}

#[test]
fn start_registers_as_windows_runs_jobs_stops_one_and_shuts_down() {
    let Some(wine) = parts_or_skip("start_registers_as_windows_runs_jobs_stops_one_and_shuts_down")
    else {
        return;
    };
    let setup = Setup::new(wine);
    // The .exe is a release build, which ignores the test-only knobs; the
    // hub's `next_sync_after` (100 ms) keeps the syncs quick anyway.
    let hub = Hub::start();
    let stdout = std::fs::File::create(setup.sandbox.path("stdout")).unwrap();
    let stderr = std::fs::File::create(setup.sandbox.path("stderr")).unwrap();
    let child = setup
        .agent()
        .args([
            "start",
            "--endpoint",
            &hub.endpoint(),
            "--no-https",
            "--token",
            REGISTRATION_TOKEN,
            "--name",
            "wine-agent-under-test",
        ])
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start the .exe under wine");
    let mut agent = Running {
        setup: &setup,
        child,
    };

    // Register: Windows, from RtlGetVersion, and the real architecture.
    assert!(
        hub.wait_until(WAIT, |h| h.register_body().is_some()),
        "the agent never registered"
    );
    let register = hub.register_body().unwrap();
    let os = register["os"].as_str().unwrap_or("");
    assert!(
        os.starts_with("Windows ") && os.contains(" - Build "),
        "os = {os:?}"
    );
    assert_eq!(register["arch"], "x86_64");

    // A job through the PowerShell executor (the stand-in runs it).
    let mut request = job(&[
        "Write-Output hello from the stand-in",
        "$env:WINE_STATE = \"carried over\"",
        "Set-Location C:\\users",
        "Write-Output $env:WINE_STATE",
        "Get-Location",
        "Write-Output $env:JOB_VAR",
    ]);
    request["env_vars"] = json!([{"name": "JOB_VAR", "value": b64("from the job")}]);
    request["files"] =
        json!([{"path": "wine-test/hello.txt", "content": b64("hi"), "mode": "0444"}]);
    request["epilogue_always_commands"] =
        json!([{"directive": "Write-Output $env:SEMAPHORE_JOB_RESULT"}]);
    let id = hub.queue_job(request);
    assert_eq!(hub.wait_for_result(&id, WAIT).as_deref(), Some("passed"));
    let output = hub.output(&id);
    for expected in [
        "Exporting JOB_VAR\n",
        "wine-test\\hello.txt with file mode 0444\n",
        "hello from the stand-in\n",
        "carried over\n",
        "C:\\users\n",
        "from the job\n",
        "passed\n",
    ] {
        assert!(output.contains(expected), "{expected:?} not in {output:?}");
    }
    assert!(
        !output.contains("stand-in:"),
        "the stand-in refused: {output}"
    );
    assert!(!output.contains('\r'), "CRLF reached the log: {output:?}");
    assert_eq!(hub.log_violations(), Vec::<String>::new());
    // The agent log names the containment and what the job used.
    let log = setup.agent_log();
    assert!(
        log.contains("Job processes run in a Windows Job Object"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("Job used ") && l.contains("; Job Object)")),
        "no usage line from the Job Object:\n{log}"
    );
    // The file is read-only: wine maps that to no write bits on Linux.
    let written: Vec<PathBuf> = std::fs::read_dir(setup.wine.prefix.join("drive_c/users"))
        .unwrap()
        .flatten()
        .map(|user| user.path().join("wine-test/hello.txt"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(written.len(), 1, "hello.txt not under any user's home");
    assert_eq!(std::fs::read_to_string(&written[0]).unwrap(), "hi");
    assert!(std::fs::metadata(&written[0])
        .unwrap()
        .permissions()
        .readonly());
    // Leave no read-only file behind in the shared prefix.
    let mut permissions = std::fs::metadata(&written[0]).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    let _ = std::fs::set_permissions(&written[0], permissions);
    let _ = std::fs::remove_dir_all(written[0].parent().unwrap());

    // A failing command: its exit code, the job failed.
    let failing = hub.queue_job(job(&[
        "Write-Output before",
        "exit 3",
        "Write-Output never",
    ]));
    assert_eq!(
        hub.wait_for_result(&failing, WAIT).as_deref(),
        Some("failed")
    );
    let codes = finished_exit_codes(&hub, &failing);
    assert!(codes.contains(&("exit 3".to_string(), 3)), "{codes:?}");
    assert!(!hub.output(&failing).contains("never"));

    // A stop ends the running command through the Job Object.
    let sleeper = hub.queue_job(job(&[
        "Write-Output sleeping",
        "Start-Sleep 600",
        "Write-Output woke",
    ]));
    assert!(
        hub.wait_until(WAIT, |h| h.output(&sleeper).contains("sleeping\n")),
        "the sleeping job never started"
    );
    assert!(
        hub.wait_until(WAIT, |_| !powershells().is_empty()),
        "the stand-in never ran Start-Sleep"
    );
    hub.stop_job(&sleeper);
    assert_eq!(
        hub.wait_for_result(&sleeper, WAIT).as_deref(),
        Some("stopped")
    );
    let codes = finished_exit_codes(&hub, &sleeper);
    // Go's Windows agent logs a stopped command with exit code 0.
    assert!(
        codes.contains(&("Start-Sleep 600".to_string(), 0)),
        "{codes:?}"
    );
    assert!(!hub.output(&sleeper).contains("woke"));
    assert!(
        hub.wait_until(Duration::from_secs(10), |_| powershells().is_empty()),
        "the stopped command outlived the stop: {:?}",
        powershells()
    );

    // The control plane asks the agent to shut down.
    hub.shutdown("requested");
    assert_eq!(wait_child(&mut agent.child, WAIT), Some(0));
}

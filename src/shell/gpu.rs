//! GPUs, through `nvidia-smi` (a static musl binary cannot load NVML, the
//! driver's glibc library): which GPUs the agent has (`--gpus`, `all`
//! resolved to what `nvidia-smi` lists), the health gate's check (or the
//! operator's `--gpu-health-command`), and sampling what a job's processes
//! use on the GPU while it runs (the "gpu-sampler" thread).
//!
//! Every `nvidia-smi` runs from the child environment (`child_env`), stdin
//! closed, bounded by a timeout (then killed); its short output comes back
//! through a pipe. This module must not decide what an unhealthy
//! GPU means for the agent (the listener does) nor which processes are the
//! job's (its caller hands a predicate).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::ffi::OsString;
use std::io::Read as _;
use std::process::Stdio;

/// A program and its arguments.
#[derive(Debug, Clone)]
struct HostCommand {
    program: OsString,
    args: Vec<OsString>,
}

impl HostCommand {
    fn new(program: impl Into<OsString>) -> HostCommand {
        HostCommand {
            program: program.into(),
            args: Vec::new(),
        }
    }

    fn arg(mut self, arg: impl Into<OsString>) -> HostCommand {
        self.args.push(arg.into());
        self
    }

    fn args<I, S>(mut self, args: I) -> HostCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// The most output kept from one run (a GPU list is a few hundred bytes).
const MAX_OUTPUT: u64 = 256 * 1024;

/// The program the driver ships.
pub const NVIDIA_SMI: &str = "nvidia-smi";

/// The longest one `nvidia-smi` (or health command) may run: a GPU that
/// fell off the bus can make it hang. Well inside the 60 s in which an
/// unhealthy agent exits.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the health gate runs while the agent waits for jobs.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How often a job's GPU use is sampled (at most every 2 s, as promised).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// `--gpus`: every GPU `nvidia-smi` lists, or these indexes / UUIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    All,
    Ids(Vec<String>),
}

impl GpuSelection {
    /// Parses `all` or a comma-separated list of indexes (`0`, `3`) and
    /// UUIDs (`GPU-6f1c...`, `MIG-...`); `Err` names the bad entry.
    pub fn parse(text: &str) -> Result<GpuSelection, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(GpuSelection::All);
        }
        let mut ids = Vec::new();
        for entry in text.split(',').map(str::trim) {
            let index = !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit());
            let uuid = (entry.starts_with("GPU-") || entry.starts_with("MIG-"))
                && entry.len() > 4
                && entry
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/');
            if !(index || uuid) {
                return Err(entry.to_string());
            }
            if !ids.iter().any(|i| i == entry) {
                ids.push(entry.to_string());
            }
        }
        if ids.is_empty() {
            return Err(text.to_string());
        }
        Ok(GpuSelection::Ids(ids))
    }

    /// As given (`all`, or the list).
    pub fn as_text(&self) -> String {
        match self {
            GpuSelection::All => "all".to_string(),
            GpuSelection::Ids(ids) => ids.join(","),
        }
    }
}

/// One GPU as `nvidia-smi --query-gpu=index,uuid,...` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: String,
    pub uuid: String,
    /// The other fields of the line (name, bus id, ...), as printed.
    pub rest: Vec<String>,
}

impl Gpu {
    /// Whether `id` (an index or a UUID) names this GPU.
    fn is(&self, id: &str) -> bool {
        self.index == id || self.uuid == id
    }
}

/// Why the GPUs are not fit for jobs: the GPU it is about (`None` when the
/// check itself failed for all of them) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuFault {
    pub gpu: Option<String>,
    pub error: String,
}

impl std::fmt::Display for GpuFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.gpu {
            Some(gpu) => write!(f, "GPU {gpu} is unhealthy: {}", self.error),
            None => write!(f, "GPUs are unhealthy: {}", self.error),
        }
    }
}

impl std::error::Error for GpuFault {}

/// The query the health gate runs without `--gpu-health-command`.
pub fn default_health_query() -> Vec<&'static str> {
    vec![
        "--query-gpu=index,uuid,name,pci.bus_id",
        "--format=csv,noheader",
    ]
}

/// Parses `index, uuid, ...` lines; a line with fewer than two fields is
/// skipped (a warning banner, an empty line).
pub fn parse_gpu_list(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<String> = line.split(',').map(|f| f.trim().to_string()).collect();
            if fields.len() < 2 || fields[0].is_empty() {
                return None;
            }
            Some(Gpu {
                index: fields[0].clone(),
                uuid: fields[1].clone(),
                rest: fields[2..].to_vec(),
            })
        })
        .collect()
}

/// Whether a field is the driver's word for a broken GPU: `[GPU is lost]`,
/// `[Unknown Error]`, `[GPU requires reset]`; `[N/A]` and
/// `[Not Supported]` are normal.
fn broken_field(field: &str) -> bool {
    field.starts_with('[')
        && field.ends_with(']')
        && !matches!(
            field,
            "[N/A]" | "[Not Supported]" | "[Insufficient Permissions]"
        )
}

/// The verdict on `listed` (what the check printed) for `selection`: the
/// ids of the assigned GPUs (indexes or UUIDs as the operator gave them;
/// for `all` every listed index), or the first fault.
pub fn judge(selection: &GpuSelection, listed: &[Gpu]) -> Result<Vec<String>, GpuFault> {
    let assigned: Vec<&Gpu> = match selection {
        GpuSelection::All => listed.iter().collect(),
        GpuSelection::Ids(ids) => {
            let mut found = Vec::new();
            for id in ids {
                match listed.iter().find(|g| g.is(id)) {
                    Some(gpu) => found.push(gpu),
                    None => {
                        return Err(GpuFault {
                            gpu: Some(id.clone()),
                            error: format!(
                                "not listed by the GPU check (it listed: {})",
                                if listed.is_empty() {
                                    "no GPU".to_string()
                                } else {
                                    listed
                                        .iter()
                                        .map(|g| format!("{} {}", g.index, g.uuid))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                }
                            ),
                        })
                    }
                }
            }
            found
        }
    };
    if assigned.is_empty() {
        return Err(GpuFault {
            gpu: None,
            error: "the GPU check lists no GPU".to_string(),
        });
    }
    for gpu in &assigned {
        if let Some(field) = gpu.rest.iter().chain([&gpu.uuid]).find(|f| broken_field(f)) {
            return Err(GpuFault {
                gpu: Some(gpu.index.clone()),
                error: format!("the GPU check reports {field}"),
            });
        }
    }
    Ok(match selection {
        GpuSelection::All => assigned.iter().map(|g| g.index.clone()).collect(),
        GpuSelection::Ids(ids) => ids.clone(),
    })
}

/// The GPU health gate's check: runs `nvidia-smi --query-gpu=...` (or
/// `command` through `sh -c`, which must print the same `index, uuid, ...`
/// lines) and judges it: exit 0 and every assigned GPU listed, none
/// reported broken. `Ok` holds the assigned GPUs' ids.
pub fn check(selection: &GpuSelection, command: Option<&str>) -> Result<Vec<String>, GpuFault> {
    let (what, cmd) = match command {
        Some(cmd) => (
            format!("the GPU health command '{cmd}'"),
            shell_command(cmd),
        ),
        None => (
            NVIDIA_SMI.to_string(),
            HostCommand::new(NVIDIA_SMI).args(default_health_query()),
        ),
    };
    // A check that fails as a whole fails every assigned GPU.
    let output = run(&cmd, CHECK_TIMEOUT).map_err(|error| GpuFault {
        gpu: Some(selection.as_text()),
        error: format!("{what}: {error}"),
    })?;
    let listed = parse_gpu_list(&output);
    judge(selection, &listed)
}

#[cfg(unix)]
fn shell_command(cmd: &str) -> HostCommand {
    HostCommand::new("sh").arg("-c").arg(cmd)
}

#[cfg(windows)]
fn shell_command(cmd: &str) -> HostCommand {
    HostCommand::new("cmd").arg("/C").arg(cmd)
}

/// Runs `cmd` (stdout kept, stderr merged for the error) within
/// `timeout`: its output if it exited 0, else why not (status and the last
/// line it printed).
fn run(cmd: &HostCommand, timeout: Duration) -> Result<String, String> {
    let name = cmd.program.to_string_lossy().into_owned();
    let mut child = crate::child_env::command(&cmd.program)
        .args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    // The readers drain both pipes while the child runs, so a chatty child
    // cannot block on a full pipe; each ends when its pipe closes.
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .filter_map(|pipe| {
        std::thread::Builder::new()
            .name("gpu-query-pipe".into())
            .spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut bytes);
                bytes
            })
            .ok()
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "{name} did not finish within {}s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("cannot wait for {name}: {e}"));
            }
        }
    };
    let outputs: Vec<String> = readers
        .into_iter()
        .map(|r| {
            r.join()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        })
        .collect();
    let status = status?;
    let output = outputs.concat();
    match status {
        status if status.success() => Ok(outputs.into_iter().next().unwrap_or_default()),
        status => {
            let said = output
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>();
            let status = status
                .code()
                .map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
            Err(if said.is_empty() {
                format!("exited with {status}")
            } else {
                format!("exited with {status}: {said}")
            })
        }
    }
}

/// What a job used on its GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuUsage {
    /// The most GPU memory the job's processes held at once (MiB, as the
    /// driver counts it), over all samples.
    pub peak_memory_mib: u64,
    /// The mean utilisation (percent) of the assigned GPUs over the
    /// samples where the driver gave one.
    pub mean_utilization: Option<f64>,
    /// How many samples were taken.
    pub samples: u64,
}

/// `pid, used_memory` lines (`--query-compute-apps`, `nounits`: MiB).
pub fn parse_compute_apps(text: &str) -> Vec<(i32, u64)> {
    text.lines()
        .filter_map(|line| {
            let (pid, used) = line.split_once(',')?;
            Some((pid.trim().parse().ok()?, used.trim().parse().ok()?))
        })
        .collect()
}

/// `index, uuid, utilization.gpu` lines: the mean utilisation of the
/// listed GPUs that are in `ids` (an index or UUID each); `None` when no
/// such GPU gave a number (`[N/A]`).
pub fn parse_utilization(text: &str, ids: &[String]) -> Option<f64> {
    let values: Vec<f64> = parse_gpu_list(text)
        .into_iter()
        .filter(|g| ids.iter().any(|id| g.is(id)))
        .filter_map(|g| g.rest.first()?.trim().parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Whether a process belongs to the job.
pub type IsJobProcess = Box<dyn Fn(i32) -> bool + Send>;

#[derive(Default)]
struct Totals {
    peak: u64,
    util_sum: f64,
    util_samples: u64,
    samples: u64,
}

/// Samples a running job's GPU use on a thread of its own ("gpu-sampler")
/// every [`SAMPLE_INTERVAL`] until [`GpuSampler::finish`].
pub struct GpuSampler {
    quit: Arc<AtomicBool>,
    totals: Arc<Mutex<Totals>>,
    handle: Option<JoinHandle<()>>,
}

impl GpuSampler {
    /// Starts sampling the GPUs `ids` for the processes `is_job` accepts.
    /// `None` (and a debug line) when the thread cannot start: the job runs
    /// without GPU figures.
    pub fn start(ids: Vec<String>, is_job: IsJobProcess) -> Option<GpuSampler> {
        let quit = Arc::new(AtomicBool::new(false));
        let totals = Arc::new(Mutex::new(Totals::default()));
        let handle = {
            let quit = Arc::clone(&quit);
            let totals = Arc::clone(&totals);
            std::thread::Builder::new()
                .name("gpu-sampler".into())
                .spawn(move || sample_loop(&ids, &*is_job, &quit, &totals))
        };
        match handle {
            Ok(handle) => Some(GpuSampler {
                quit,
                totals,
                handle: Some(handle),
            }),
            Err(e) => {
                log::warn!("cannot start the GPU sampler thread: {e}");
                None
            }
        }
    }

    /// Stops sampling (after one last sample, while the job's processes
    /// are still there) and returns what was seen.
    pub fn finish(mut self) -> GpuUsage {
        self.quit.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        let totals = self
            .totals
            .lock()
            .map(|t| (t.peak, t.util_sum, t.util_samples, t.samples));
        let (peak, util_sum, util_samples, samples) = totals.unwrap_or_default();
        GpuUsage {
            peak_memory_mib: peak,
            mean_utilization: (util_samples > 0).then(|| util_sum / util_samples as f64),
            samples,
        }
    }
}

impl Drop for GpuSampler {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn sample_loop(
    ids: &[String],
    is_job: &dyn Fn(i32) -> bool,
    quit: &AtomicBool,
    totals: &Mutex<Totals>,
) {
    // A sample is short (two nvidia-smi runs); each is bounded so that a
    // hanging driver cannot hold the job's end up for long.
    const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);
    let apps_query = HostCommand::new(NVIDIA_SMI).args([
        "--query-compute-apps=pid,used_memory",
        "--format=csv,noheader,nounits",
    ]);
    let util_query = HostCommand::new(NVIDIA_SMI).args([
        "--query-gpu=index,uuid,utilization.gpu",
        "--format=csv,noheader,nounits",
    ]);
    let mut reported = false;
    loop {
        let next = Instant::now() + SAMPLE_INTERVAL;
        let stopping = quit.load(Ordering::SeqCst);
        match run(&apps_query, SAMPLE_TIMEOUT) {
            Ok(text) => {
                let used: u64 = parse_compute_apps(&text)
                    .into_iter()
                    .filter(|(pid, _)| is_job(*pid))
                    .map(|(_, mib)| mib)
                    .sum();
                let util = run(&util_query, SAMPLE_TIMEOUT)
                    .ok()
                    .and_then(|t| parse_utilization(&t, ids));
                if let Ok(mut t) = totals.lock() {
                    t.peak = t.peak.max(used);
                    t.samples += 1;
                    if let Some(u) = util {
                        t.util_sum += u;
                        t.util_samples += 1;
                    }
                }
            }
            Err(e) if !reported => {
                reported = true;
                log::warn!("Cannot sample the job's GPU use with {NVIDIA_SMI}: {e}");
            }
            Err(_) => {}
        }
        if stopping {
            return;
        }
        while Instant::now() < next {
            if quit.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The variables a host job gets for its GPUs `ids`.
pub fn job_env(ids: &[String]) -> Vec<(String, String)> {
    let list = ids.join(",");
    vec![
        ("CUDA_VISIBLE_DEVICES".to_string(), list.clone()),
        ("NVIDIA_VISIBLE_DEVICES".to_string(), list),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_parse_and_bad_entries_are_named() {
        assert_eq!(GpuSelection::parse("all"), Ok(GpuSelection::All));
        assert_eq!(GpuSelection::parse(" ALL "), Ok(GpuSelection::All));
        assert_eq!(
            GpuSelection::parse("0, 3,0"),
            Ok(GpuSelection::Ids(vec!["0".into(), "3".into()]))
        );
        assert_eq!(
            GpuSelection::parse("GPU-6f1c2a9e-1111-2222-3333-444455556666,1"),
            Ok(GpuSelection::Ids(vec![
                "GPU-6f1c2a9e-1111-2222-3333-444455556666".into(),
                "1".into()
            ]))
        );
        assert_eq!(GpuSelection::parse("0,x1"), Err("x1".into()));
        assert_eq!(GpuSelection::parse("0,,1"), Err(String::new()));
        assert_eq!(GpuSelection::parse("-1"), Err("-1".into()));
        assert_eq!(GpuSelection::parse("GPU-"), Err("GPU-".into()));
        assert_eq!(GpuSelection::parse("0;rm -rf"), Err("0;rm -rf".into()));
    }

    const LIST: &str = "0, GPU-aaa, NVIDIA A100, 00000000:3B:00.0\n\
                        1, GPU-bbb, NVIDIA A100, 00000000:5E:00.0\n";

    #[test]
    fn the_gate_wants_every_assigned_gpu_listed_and_sound() {
        let listed = parse_gpu_list(LIST);
        assert_eq!(listed.len(), 2);
        assert_eq!(
            judge(&GpuSelection::All, &listed),
            Ok(vec!["0".into(), "1".into()])
        );
        let ids = |s: &str| GpuSelection::parse(s).unwrap();
        assert_eq!(judge(&ids("GPU-bbb"), &listed), Ok(vec!["GPU-bbb".into()]));
        let missing = judge(&ids("0,2"), &listed).unwrap_err();
        assert_eq!(missing.gpu.as_deref(), Some("2"));
        assert!(missing
            .to_string()
            .contains("GPU 2 is unhealthy: not listed"));
        let lost = parse_gpu_list("0, GPU-aaa, [GPU is lost], [Unknown Error]\n1, GPU-bbb, x, y\n");
        let fault = judge(&ids("0"), &lost).unwrap_err();
        assert_eq!(fault.gpu.as_deref(), Some("0"));
        assert!(fault.error.contains("[GPU is lost]"), "{fault}");
        assert!(judge(&ids("1"), &lost).is_ok());
        let na = parse_gpu_list("0, GPU-aaa, [N/A], x\n");
        assert!(judge(&ids("0"), &na).is_ok());
        assert!(judge(&GpuSelection::All, &[]).is_err());
    }

    #[test]
    fn compute_apps_and_utilization_lines() {
        assert_eq!(
            parse_compute_apps("123, 300\n 456 , 12\nNo running processes found\n"),
            vec![(123, 300), (456, 12)]
        );
        let util = "0, GPU-aaa, 40\n1, GPU-bbb, 80\n2, GPU-ccc, [N/A]\n";
        assert_eq!(
            parse_utilization(util, &["0".into(), "GPU-bbb".into()]),
            Some(60.0)
        );
        assert_eq!(parse_utilization(util, &["2".into()]), None);
    }

    #[test]
    fn host_jobs_get_both_variables() {
        assert_eq!(
            job_env(&["0".into(), "2".into()]),
            vec![
                ("CUDA_VISIBLE_DEVICES".into(), "0,2".into()),
                ("NVIDIA_VISIBLE_DEVICES".into(), "0,2".into())
            ]
        );
    }
}

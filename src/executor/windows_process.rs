//! The process side of the PowerShell executor (Windows only): one Job
//! Object per job, one process per command inside it (the executor makes
//! it a PowerShell), and a reader thread per command that drains the
//! command's one output pipe.
//!
//! Owns the Windows handles: the Job Object (`KILL_ON_JOB_CLOSE`, so
//! closing it, or a stop, ends every process the job started, however deep)
//! and the anonymous pipe that carries stdout and stderr. Output goes
//! through `output::Chunker` like the PTY's (CRLF as LF, UTF-8 kept whole,
//! any byte emitted within ~100 ms). A leaf: it knows nothing of scripts,
//! state or PowerShell; `powershell.rs` hands it the arguments, the
//! directory and the environment (built from `child_env`) of each command.

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io::Read;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::os::windows::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectBasicAccountingInformation,
    JobObjectExtendedLimitInformation, QueryInformationJobObject, SetInformationJobObject,
    TerminateJobObject, JOBOBJECTINFOCLASS, JOBOBJECT_BASIC_ACCOUNTING_INFORMATION,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Pipes::CreatePipe;
use windows_sys::Win32::System::Threading::{CREATE_NEW_PROCESS_GROUP, CREATE_UNICODE_ENVIRONMENT};

use super::Stop;
use crate::output::Chunker;

/// How often the run loop looks at the stop flag and the process.
const POLL: Duration = Duration::from_millis(50);
/// How long output is still read after the command's process ended: what a
/// process it left in the background prints later is not this command's.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// How long a stopped command may take to die before the run gives up on it.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// The exit code the job's processes get when the Job Object ends them.
const KILLED_EXIT_CODE: u32 = 1;

/// How one command ended.
pub enum RunEnd {
    Exited(i32),
    Stopped,
    /// The process could not be started or watched; the text says why.
    Failed(String),
}

/// A Job Object handle, closed on drop; closing it kills what is inside.
struct JobObject(HANDLE);

// SAFETY: a Job Object handle may be used from any thread; the Windows
// calls made with it (TerminateJobObject, AssignProcessToJobObject,
// CloseHandle) are thread-safe.
unsafe impl Send for JobObject {}
// SAFETY: as above; the handle is only read after creation.
unsafe impl Sync for JobObject {}

impl JobObject {
    fn new() -> std::io::Result<JobObject> {
        // SAFETY: null attributes and name are allowed (default security,
        // unnamed); the returned handle is owned by the JobObject.
        let handle = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if handle.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let job = JobObject(handle);
        // SAFETY: the struct is plain integers, for which zero is valid.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: `job.0` is a live Job Object handle; the pointer and size
        // describe `limits`, which outlives the call.
        let ok = unsafe {
            SetInformationJobObject(
                job.0,
                JobObjectExtendedLimitInformation,
                (&limits as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(job)
    }

    fn assign(&self, process: RawHandle) -> std::io::Result<()> {
        // SAFETY: both handles are live: ours for the JobObject's lifetime,
        // the process's for the borrowed Child's.
        let ok = unsafe { AssignProcessToJobObject(self.0, process as HANDLE) };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// One information class of the job, into a `T` of plain integers.
    ///
    /// # Safety
    /// `T` must be the structure Windows fills for `class`, and all-zero
    /// must be a valid `T`.
    unsafe fn query<T>(&self, class: JOBOBJECTINFOCLASS) -> std::io::Result<T> {
        // SAFETY: the caller promises that zero is a valid `T`.
        let mut info: T = unsafe { std::mem::zeroed() };
        // SAFETY: the handle is live; pointer and size describe `info`, the
        // structure the caller promises `class` fills.
        let ok = unsafe {
            QueryInformationJobObject(
                self.0,
                class,
                (&mut info as *mut T).cast(),
                std::mem::size_of::<T>() as u32,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(info)
    }

    /// What the job's processes used so far: CPU time, the peak of their
    /// memory together, and how many were started.
    fn usage(&self) -> std::io::Result<crate::usage::Usage> {
        // SAFETY: each class with its own structure of plain integers.
        let basic: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION =
            unsafe { self.query(JobObjectBasicAccountingInformation)? };
        // SAFETY: as above.
        let limits: Option<JOBOBJECT_EXTENDED_LIMIT_INFORMATION> =
            unsafe { self.query(JobObjectExtendedLimitInformation).ok() };
        let memory = limits
            .map(|l| l.PeakJobMemoryUsed as u64)
            .filter(|&peak| peak > 0)
            .map(crate::usage::Memory::Peak);
        // 100 ns ticks.
        let usec = |ticks: i64| u64::try_from(ticks).unwrap_or(0) / 10;
        Ok(crate::usage::Usage {
            user_usec: usec(basic.TotalUserTime),
            system_usec: usec(basic.TotalKernelTime),
            source: "Job Object",
            memory,
            processes: Some((u64::from(basic.TotalProcesses), false)),
            gpu: None,
        })
    }

    /// Ends every process in the job; the handle stays usable.
    fn terminate(&self) {
        // SAFETY: the handle is live for the JobObject's lifetime.
        unsafe { TerminateJobObject(self.0, KILLED_EXIT_CODE) };
    }
}

impl Drop for JobObject {
    fn drop(&mut self) {
        // SAFETY: the handle was returned by CreateJobObjectW and is closed
        // only here, once.
        unsafe { CloseHandle(self.0) };
    }
}

/// An anonymous pipe: (read end, write end), neither inheritable (std
/// makes the child's copy of the write end inheritable itself).
fn pipe() -> std::io::Result<(std::fs::File, OwnedHandle)> {
    let mut read: HANDLE = std::ptr::null_mut();
    let mut write: HANDLE = std::ptr::null_mut();
    // SAFETY: both out-pointers point to live locals; null attributes mean
    // default security and no inheritance; 0 is the default buffer size.
    let ok = unsafe { CreatePipe(&mut read, &mut write, std::ptr::null(), 0) };
    if ok == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CreatePipe succeeded, so both handles are new and owned by us
    // alone; each is wrapped once.
    let (read, write) = unsafe {
        (
            OwnedHandle::from_raw_handle(read as RawHandle),
            OwnedHandle::from_raw_handle(write as RawHandle),
        )
    };
    Ok((std::fs::File::from(read), write))
}

/// The job's shell program and the Job Object every command joins.
pub struct Session {
    program: PathBuf,
    job: Arc<JobObject>,
    /// Readers still blocked on a pipe that a background process holds
    /// open; they end when `close` kills the job, and are joined there.
    readers: Vec<JoinHandle<()>>,
    /// Whether the usage line was logged (once, at the first `close`).
    reported: bool,
}

impl Session {
    /// Creates the Job Object and ties it to `stop`.
    pub fn start(program: PathBuf, stop: &Stop) -> std::io::Result<Session> {
        let job = Arc::new(JobObject::new()?);
        let on_stop = Arc::clone(&job);
        stop.on_stop(Box::new(move || on_stop.terminate()));
        Ok(Session {
            program,
            job,
            readers: Vec::new(),
            reported: false,
        })
    }

    /// Runs the program with `args` in `cwd` with exactly `env`, inside
    /// the Job Object, sending its output to `on_output`.
    pub fn run(
        &mut self,
        args: &[OsString],
        cwd: &str,
        env: &[(String, String)],
        stop: &Stop,
        on_output: &mut dyn FnMut(&str),
    ) -> RunEnd {
        let (mut read, write) = match pipe() {
            Ok(ends) => ends,
            Err(e) => return RunEnd::Failed(format!("Failed to create a pipe: {e}")),
        };
        let write_err = match write.try_clone() {
            Ok(handle) => handle,
            Err(e) => return RunEnd::Failed(format!("Failed to create a pipe: {e}")),
        };
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .envs(env.iter().map(|(n, v)| (n, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(write_err))
            .creation_flags(CREATE_UNICODE_ENVIRONMENT | CREATE_NEW_PROCESS_GROUP);
        let spawned = command.spawn();
        // Our copies of the write end must go, or the pipe never ends.
        drop(command);
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                return RunEnd::Failed(format!(
                    "Failed to start {} in {}: {e}",
                    self.program.display(),
                    cwd
                ))
            }
        };
        if let Err(e) = self.job.assign(child.as_raw_handle()) {
            // A process that already ended cannot join a job (access
            // denied); there is nothing left of it to contain.
            if !matches!(child.try_wait(), Ok(Some(_))) {
                // Without the Job Object a stop could not reach the
                // command's children; refuse to run it rather than lose them.
                let _ = child.kill();
                let _ = child.wait();
                return RunEnd::Failed(format!(
                    "Failed to add the command to the job's Job Object: {e}"
                ));
            }
        }
        if stop.is_stopped() {
            self.job.terminate();
        }

        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(16);
        let reader = std::thread::Builder::new()
            .name("job-process-reader".into())
            .spawn(move || {
                let mut buf = vec![0u8; 4096];
                loop {
                    match read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(buf[..n].to_vec()).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        let reader = match reader {
            Ok(handle) => handle,
            Err(e) => {
                self.job.terminate();
                let _ = child.wait();
                return RunEnd::Failed(format!("Failed to start the output reader: {e}"));
            }
        };

        let mut chunker = Chunker::new();
        let mut exited: Option<(i32, Instant)> = None;
        let mut stopped_at: Option<Instant> = None;
        let mut eof = false;
        loop {
            let now = Instant::now();
            let wait = chunker
                .deadline()
                .map_or(POLL, |d| d.saturating_duration_since(now).min(POLL));
            match rx.recv_timeout(wait) {
                Ok(bytes) => chunker.push(&bytes, Instant::now(), on_output),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => eof = true,
            }
            let now = Instant::now();
            chunker.poll(now, on_output);
            if stop.is_stopped() && stopped_at.is_none() {
                self.job.terminate();
                stopped_at = Some(now);
            }
            if exited.is_none() {
                match child.try_wait() {
                    Ok(Some(status)) => exited = Some((status.code().unwrap_or(1), now)),
                    Ok(None) => {}
                    Err(e) => {
                        log::error!("Could not watch the job's process: {e}");
                        self.job.terminate();
                        exited = Some((1, now));
                    }
                }
            }
            match (exited, stopped_at) {
                (Some((_, at)), _) if eof || now.duration_since(at) >= DRAIN_AFTER_EXIT => break,
                (None, Some(at)) if now.duration_since(at) >= STOP_WAIT => {
                    log::error!("The job's stopped process did not end; leaving it");
                    break;
                }
                _ if eof && exited.is_none() => std::thread::sleep(POLL),
                _ => {}
            }
        }
        chunker.finish(on_output);
        drop(rx);
        if eof {
            let _ = reader.join();
        } else {
            self.readers.push(reader);
        }
        if stopped_at.is_some() {
            return RunEnd::Stopped;
        }
        match exited {
            Some((code, _)) => RunEnd::Exited(code),
            None => RunEnd::Stopped,
        }
    }

    /// Kills everything the job started and joins the readers it left
    /// (bounded: a reader still blocked after the kill is left behind).
    pub fn close(&mut self) {
        if !std::mem::replace(&mut self.reported, true) {
            match self.job.usage() {
                Ok(usage) => log::info!("{usage}"),
                Err(e) => log::debug!("cannot read the job's accounting: {e}"),
            }
        }
        self.job.terminate();
        let deadline = Instant::now() + STOP_WAIT;
        for reader in self.readers.drain(..) {
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if reader.is_finished() {
                let _ = reader.join();
            } else {
                log::warn!("A job's output pipe is still open after the job was ended");
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

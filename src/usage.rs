//! The agent-log line of what a job used: CPU time, memory, processes.
//!
//! Owns only the wording, so every platform's executor reports the same
//! way (`shell` on Linux from the job's cgroup or bash's accounting, the
//! Windows executor from its Job Object). It must not measure anything.

/// What a job's processes used, as far as the platform tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub user_usec: u64,
    pub system_usec: u64,
    /// Where the figures come from ("cgroup", "Job Object", ...).
    pub source: &'static str,
    pub memory: Option<Memory>,
    /// Processes started, and whether that is only a lower bound.
    pub processes: Option<(u64, bool)>,
    /// What the job's processes used on its GPUs (`--gpus`).
    pub gpu: Option<Gpu>,
}

/// A job's GPU figures, sampled while it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    /// The most GPU memory its processes held at once.
    pub peak_memory_bytes: u64,
    /// The mean utilisation of its GPUs, in thousandths, where the driver
    /// gave one.
    pub mean_utilization_permille: Option<u64>,
}

/// A memory figure and what it is the peak of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// The peak of all the job's processes together.
    Peak(u64),
    /// The peak resident size of the largest single process.
    LargestProcess(u64),
}

/// Microseconds as seconds with milliseconds.
fn secs(micros: u64) -> String {
    format!("{}.{:03} s", micros / 1_000_000, micros % 1_000_000 / 1000)
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!(
        "{}.{} MiB",
        bytes >> 20,
        ((bytes & ((1 << 20) - 1)) * 10) >> 20
    )
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Job used {} CPU (user {}, system {}; {})",
            secs(self.user_usec.saturating_add(self.system_usec)),
            secs(self.user_usec),
            secs(self.system_usec),
            self.source
        )?;
        match self.memory {
            Some(Memory::Peak(bytes)) => write!(f, ", peak memory {}", mib(bytes))?,
            Some(Memory::LargestProcess(bytes)) => {
                write!(f, ", largest process {} resident", mib(bytes))?
            }
            None => {}
        }
        match self.processes {
            Some((n, false)) => write!(f, ", {n} processes started")?,
            Some((n, true)) => write!(f, ", at least {n} processes started")?,
            None => {}
        }
        if let Some(gpu) = self.gpu {
            write!(f, ", peak GPU memory {}", mib(gpu.peak_memory_bytes))?;
            if let Some(u) = gpu.mean_utilization_permille {
                write!(f, ", mean GPU utilisation {}.{}%", u / 10, u % 10)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_what_is_known() {
        let usage = Usage {
            user_usec: 1_215_400,
            system_usec: 199_000,
            source: "cgroup",
            memory: Some(Memory::Peak(210 * 1024 * 1024 + 300 * 1024)),
            processes: Some((168, false)),
            gpu: None,
        };
        assert_eq!(
            usage.to_string(),
            "Job used 1.414 s CPU (user 1.215 s, system 0.199 s; cgroup), \
             peak memory 210.2 MiB, 168 processes started"
        );
        let bare = Usage {
            memory: Some(Memory::LargestProcess(3 << 20)),
            processes: Some((9, true)),
            ..usage
        };
        assert!(bare
            .to_string()
            .ends_with("largest process 3.0 MiB resident, at least 9 processes started"));
        let none = Usage {
            memory: None,
            processes: None,
            ..usage
        };
        assert!(none.to_string().ends_with("; cgroup)"));
        let gpu = Usage {
            gpu: Some(Gpu {
                peak_memory_bytes: 300 << 20,
                mean_utilization_permille: Some(425),
            }),
            ..none
        };
        assert!(gpu
            .to_string()
            .ends_with("; cgroup), peak GPU memory 300.0 MiB, mean GPU utilisation 42.5%"));
    }
}

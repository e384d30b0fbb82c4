//! STAND-INS for what a GPU box has and this machine does not (issue 30):
//! an `nvidia-smi` and an `nvidia-container-runtime-hook`, both shell
//! scripts that say they are stand-ins. Neither touches a GPU.
//!
//! The `nvidia-smi` stand-in answers the queries the agent makes:
//! - `--query-gpu=...`: the lines of `<state>/gpus` (by default two GPUs,
//!   `0, GPU-standin-0, ...` and `1, GPU-standin-1, ...`); a third field of
//!   `utilization.gpu` queries is 50.
//! - `--query-compute-apps=pid,used_memory`: every process whose
//!   environment holds `GPU_STANDIN_USED_MIB=<n>` ("marked"), with n MiB.
//! - `-L`: one `GPU i: ... (UUID: ...)` line per GPU.
//!
//! While `<state>/fail` exists it prints that file to stderr and exits 9,
//! as a driver that lost its GPU does.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The default GPU list of the stand-in.
pub const TWO_GPUS: &str = "0, GPU-standin-0, Stand-in GPU, 00000000:3B:00.0\n\
                            1, GPU-standin-1, Stand-in GPU, 00000000:5E:00.0\n";

/// A directory with the `nvidia-smi` stand-in in `bin/` and its state.
pub struct NvidiaSmi {
    pub dir: PathBuf,
}

impl NvidiaSmi {
    /// Writes the stand-in under `root` (`root/gpu-standin/bin`).
    pub fn install(root: &Path) -> NvidiaSmi {
        let dir = root.join("gpu-standin");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("make the stand-in's bin");
        std::fs::write(dir.join("gpus"), TWO_GPUS).expect("write the stand-in's GPU list");
        let state = dir.display();
        let script = format!(
            r#"#!/bin/bash
# STAND-IN for nvidia-smi (semaphore-agent tests, issue 30): no GPU here.
state='{state}'
if [ -e "$state/fail" ]; then cat "$state/fail" >&2; exit 9; fi
case "$*" in
  *--query-compute-apps=*)
    # One grep over every environment (NUL-separated records).
    grep -a -z -H '^GPU_STANDIN_USED_MIB=' /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' |
      sed -n 's|^/proc/\([0-9]*\)/environ:GPU_STANDIN_USED_MIB=\([0-9]*\)$|\1, \2|p' ;;
  *utilization.gpu*)
    while IFS=, read -r i u _; do [ -n "$i" ] && echo "$i,$u, 50"; done <"$state/gpus" ;;
  *--query-gpu=*) cat "$state/gpus" ;;
  -L)
    while IFS=, read -r i u n _; do [ -n "$i" ] && echo "GPU $i:$n (UUID:$u)"; done <"$state/gpus" ;;
  *) echo "nvidia-smi stand-in: unsupported arguments: $*" >&2; exit 2 ;;
esac
"#
        );
        let path = bin.join("nvidia-smi");
        std::fs::write(&path, script).expect("write the nvidia-smi stand-in");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make the stand-in executable");
        NvidiaSmi { dir }
    }

    /// PATH with the stand-in first.
    pub fn path_var(&self) -> String {
        format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        )
    }

    /// From now on the stand-in fails with `message`.
    pub fn fail(&self, message: &str) {
        std::fs::write(self.dir.join("fail"), message).expect("make the stand-in fail");
    }

    /// From now on it answers again.
    pub fn recover(&self) {
        let _ = std::fs::remove_file(self.dir.join("fail"));
    }

    /// The file that makes it fail (for a job to create).
    pub fn fail_file(&self) -> PathBuf {
        self.dir.join("fail")
    }

    /// The GPU list file (for a job to change).
    pub fn gpus_file(&self) -> PathBuf {
        self.dir.join("gpus")
    }
}

/// Writes the STAND-IN `nvidia-container-runtime-hook` into `bin`: on a
/// dockerd's PATH at its start it makes the engine register its `nvidia`
/// device driver; as the OCI prestart hook it only reads the state and
/// exits 0.
pub fn install_runtime_hook(bin: &Path) {
    std::fs::create_dir_all(bin).expect("make the hook's bin");
    let path = bin.join("nvidia-container-runtime-hook");
    std::fs::write(
        &path,
        "#!/bin/sh\n# STAND-IN for nvidia-container-runtime-hook (semaphore-agent tests, issue 30)\ncat >/dev/null\nexit 0\n",
    )
    .expect("write the hook stand-in");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("make the hook executable");
}

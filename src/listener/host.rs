//! Facts about this machine sent on register: OS name, architecture,
//! hostname. Reads only; never fails (an unknown fact is sent as "").

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

/// The OS name as the Go agent reports it on Linux: `PRETTY_NAME` from
/// os-release, else `NAME`, else "". (The Go agent also needs
/// /etc/lsb-release to exist; we do not copy that quirk.)
#[cfg(not(windows))]
pub fn os_name() -> String {
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            return os_name_from(&text);
        }
    }
    String::new()
}

/// The OS name as the Go agent reports it on Windows, from `RtlGetVersion`
/// (which, unlike `GetVersionEx`, does not lie to unmanifested programs).
#[cfg(windows)]
pub fn os_name() -> String {
    use windows_sys::Wdk::System::SystemServices::RtlGetVersion;
    use windows_sys::Win32::System::SystemInformation::OSVERSIONINFOW;
    // SAFETY: OSVERSIONINFOW is plain integers and a u16 array, for which
    // all zero bytes are a valid value.
    let mut info: OSVERSIONINFOW = unsafe { std::mem::zeroed() };
    info.dwOSVersionInfoSize = std::mem::size_of::<OSVERSIONINFOW>() as u32;
    // SAFETY: `info` is a valid, writable OSVERSIONINFOW whose size field
    // is set, as RtlGetVersion requires; it lives across the call.
    let status = unsafe { RtlGetVersion(&mut info) };
    if status != 0 {
        return String::new();
    }
    windows_os_name(info.dwMajorVersion, info.dwMinorVersion, info.dwBuildNumber)
}

/// Go's format for the Windows version: `Windows 10.0 - Build 19045`.
#[cfg_attr(not(windows), allow(dead_code))] // Tested on every platform.
pub fn windows_os_name(major: u32, minor: u32, build: u32) -> String {
    format!("Windows {major}.{minor} - Build {build}")
}

#[cfg_attr(windows, allow(dead_code))] // Tested on every platform.
fn os_name_from(text: &str) -> String {
    let find = |key: &str| {
        text.lines().find_map(|line| {
            let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.split('"').next())
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.split('\'').next()))
                .unwrap_or(value);
            Some(unquoted.to_string())
        })
    };
    find("PRETTY_NAME")
        .or_else(|| find("NAME"))
        .unwrap_or_default()
}

/// The architecture in Go's GOARCH words, except amd64 → x86_64 and
/// 386 → x86, which is what the Go agent sends.
pub fn arch() -> String {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "mips" if cfg!(target_endian = "little") => "mipsle",
        other => other,
    }
    .to_string()
}

#[cfg(unix)]
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call;
    // gethostname writes at most `len` bytes into it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The DNS host name, as Go's `os.Hostname` reads it on Windows.
#[cfg(windows)]
pub fn hostname() -> String {
    use windows_sys::Win32::System::SystemInformation::{
        ComputerNamePhysicalDnsHostname, GetComputerNameExW,
    };
    let mut buf = [0u16; 256];
    let mut len = buf.len() as u32;
    // SAFETY: the pointer and `len` describe `buf`, which outlives the call;
    // the function writes at most `len` UTF-16 units and sets `len` to the
    // number written (without the terminating NUL).
    let ok =
        unsafe { GetComputerNameExW(ComputerNamePhysicalDnsHostname, buf.as_mut_ptr(), &mut len) };
    if ok == 0 {
        return std::env::var("COMPUTERNAME").unwrap_or_default();
    }
    let len = (len as usize).min(buf.len());
    String::from_utf16_lossy(&buf[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_pretty_name_then_name() {
        let text = "NAME=\"Ubuntu\"\nVERSION=\"22.04.3 LTS (Jammy Jellyfish)\"\nPRETTY_NAME=\"Ubuntu 22.04.3 LTS\"\n";
        assert_eq!(os_name_from(text), "Ubuntu 22.04.3 LTS");
        assert_eq!(os_name_from("NAME=Alpine\nID=alpine\n"), "Alpine");
        assert_eq!(os_name_from("ID=x\n"), "");
    }

    #[test]
    fn windows_version_in_go_words() {
        assert_eq!(windows_os_name(10, 0, 19045), "Windows 10.0 - Build 19045");
        assert_eq!(windows_os_name(6, 1, 7601), "Windows 6.1 - Build 7601");
    }

    #[test]
    fn arch_uses_go_words() {
        let a = arch();
        assert!(!a.is_empty());
        assert_ne!(a, "aarch64");
        assert_ne!(a, "amd64");
    }
}

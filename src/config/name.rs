//! The agent name rules: the Go agent's length limit with its URL exemption,
//! and the random name used when none is configured.
//!
//! Pure functions plus random bytes for the name; nothing here decides where
//! a name comes from (that is `Config::validate`).

use base64::Engine;

/// Shortest and longest allowed name, in bytes (Go's `len`), for names that
/// are not URLs.
pub const MIN_NAME_LEN: usize = 8;
pub const MAX_NAME_LEN: usize = 80;

/// Whether `name` is acceptable: 8–80 bytes long, or anything Go's
/// `url.ParseRequestURI` accepts (an absolute URI or an absolute path), which
/// the Go agent exempts from the length limit.
pub fn is_valid_name(name: &str) -> bool {
    is_request_uri(name) || (MIN_NAME_LEN..=MAX_NAME_LEN).contains(&name.len())
}

/// An approximation of Go's `url.ParseRequestURI(s) == nil` that is exact
/// for the names people use: `scheme:anything`, `scheme://host[:port]/...`,
/// `/absolute/path` and `*`. It rejects control bytes, a scheme-less relative
/// reference, a bad `%` escape, a host with characters Go refuses and a
/// non-numeric port, as Go does.
pub fn is_request_uri(s: &str) -> bool {
    if s.is_empty() || s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return false;
    }
    if s == "*" {
        return true;
    }
    let (scheme, rest) = match split_scheme(s) {
        Ok(parts) => parts,
        Err(()) => return false,
    };
    // Go drops the query before looking at the path.
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    if !rest.starts_with('/') {
        // With a scheme, a rootless rest is an opaque URI; without one it is
        // a relative reference, which a request URI cannot be.
        return scheme.is_some();
    }
    let path = match (scheme, rest.strip_prefix("//")) {
        (Some(_), Some(after)) => {
            let (authority, path) = match after.find('/') {
                Some(i) => after.split_at(i),
                None => (after, ""),
            };
            if !is_valid_authority(authority) {
                return false;
            }
            path
        }
        _ => rest,
    };
    has_valid_escapes(path)
}

/// Splits a leading `scheme:`; `Ok((None, s))` when there is none, `Err`
/// for a string starting with `:` (Go's "missing protocol scheme").
fn split_scheme(s: &str) -> Result<(Option<&str>, &str), ()> {
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Err(()),
            b':' => return Ok((Some(&s[..i]), &s[i + 1..])),
            _ => return Ok((None, s)),
        }
    }
    Ok((None, s))
}

fn is_valid_authority(authority: &str) -> bool {
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = if let Some(inner) = host_port.strip_prefix('[') {
        match inner.split_once(']') {
            Some((_, after)) => ("", after),
            None => return false,
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (host_port, ""),
        }
    };
    let host_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b >= 0x80 || b"-._~!$&'()*+,;=:<>\"%".contains(&b))
        && has_valid_escapes(host);
    host_ok && port.bytes().all(|b| b.is_ascii_digit())
}

fn has_valid_escapes(s: &str) -> bool {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// A random URL-safe 20-character name: 15 random bytes ([`crate::random`]) in
/// URL-safe base64 (15 bytes encode to exactly 20 characters, no padding),
/// like the Go agent's.
pub fn random_name() -> String {
    let mut bytes = [0u8; 15];
    crate::random::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_rule() {
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("short"));
        assert!(is_valid_name("12345678"));
        assert!(is_valid_name(&"x".repeat(80)));
        assert!(!is_valid_name(&"x".repeat(81)));
    }

    #[test]
    fn urls_are_exempt_from_the_length_rule() {
        let long = format!("https://example.com/{}", "a".repeat(200));
        assert!(is_valid_name(&long));
        assert!(is_valid_name("a:b"));
        assert!(is_valid_name("/x"));
        assert!(is_valid_name("*"));
        assert!(is_valid_name("http://h:8080/p?q=1"));
    }

    #[test]
    fn not_request_uris() {
        for s in [
            "",
            "abc",
            ":abc",
            "a b",
            "1a:b",
            "x\ty",
            "http://h:port/",
            "/%zz",
        ] {
            assert!(!is_request_uri(s), "{s:?}");
        }
        assert!(!is_request_uri("http://bad host/"));
    }

    #[test]
    fn random_names_are_20_url_safe_chars_and_differ() {
        let a = random_name();
        let b = random_name();
        assert_eq!(a.len(), 20);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
        assert!(is_valid_name(&a));
    }
}

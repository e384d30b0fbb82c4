//! Quoting for bash: the one way the agent puts a path or a value into a
//! command line or an env file so that bash takes it literally.
//!
//! Owns nothing else; must not decide what gets quoted.

/// Quotes a value for bash so that it is taken literally.
pub fn shell_quote(value: &str) -> String {
    // Quoting only adds ASCII to valid UTF-8, so the result is UTF-8.
    String::from_utf8_lossy(&quote_bytes(value.as_bytes())).into_owned()
}

/// [`shell_quote`] for any bytes: values that are not UTF-8 stay as they are.
pub fn quote_bytes(value: &[u8]) -> Vec<u8> {
    if !value.is_empty()
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,".contains(b))
    {
        return value.to_vec();
    }
    let mut out = Vec::with_capacity(value.len() + 2);
    out.push(b'\'');
    for &b in value {
        if b == b'\'' {
            out.extend_from_slice(br"'\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_values_literal() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$PATH:/etc/a"), "'$PATH:/etc/a'");
    }

    #[test]
    fn bytes_that_are_not_utf8_stay_as_they_are() {
        assert_eq!(quote_bytes(b"a\xffb"), b"'a\xffb'".to_vec());
        assert_eq!(quote_bytes(b"/tmp/it's"), br"'/tmp/it'\''s'".to_vec());
    }
}

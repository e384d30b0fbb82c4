//! PTY bytes to output chunks (placeholder; being built in issue 2).

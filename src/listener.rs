//! The sync loop and state machine (placeholder; issue 3).

//! Configuration (placeholder; issue 2).

//! Control-plane client and wire types (placeholder; issue 3).

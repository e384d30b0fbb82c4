//! Random bytes for agent names, command nonces and retry jitter, without a
//! dependency.
//!
//! Owns the one source of randomness in the agent: the kernel's `getrandom`,
//! with std's per-process random hasher keys mixed with the clock as the
//! fallback where that call is unavailable (very old kernels, seccomp). On
//! Windows the hasher keys are the source: std seeds them from the system's
//! CSPRNG (`ProcessPrng`), so no second Windows API is needed here.
//! Must not be used for anything that needs more than unpredictability
//! (it is no key generator).

// System calls (libc / Windows API); each `unsafe` says why it is sound.
#![allow(unsafe_code)]

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Fills `buf` with random bytes.
pub fn fill(buf: &mut [u8]) {
    #[cfg(unix)]
    {
        // SAFETY: `buf` is a valid, writable buffer of exactly the length passed.
        let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        if usize::try_from(got).ok() == Some(buf.len()) {
            return;
        }
    }
    // The counter makes two calls in the same nanosecond differ.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let nanos = crate::unix_nanos();
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(call);
        hasher.write_usize(i);
        let bytes = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// A random `u64`.
pub fn u64() -> u64 {
    let mut bytes = [0u8; 8];
    fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A random number in `[0, 1)` (retry jitter), from 53 random bits.
pub fn unit() -> f64 {
    (u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_every_length_and_differs() {
        for len in [0, 1, 7, 8, 15, 16, 33] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            super::fill(&mut a);
            super::fill(&mut b);
            if len >= 8 {
                assert_ne!(a, b, "two fills of {len} bytes were equal");
            }
        }
        assert_ne!(super::u64(), super::u64());
    }

    #[test]
    fn unit_stays_in_the_unit_interval_and_varies() {
        let draws: Vec<f64> = (0..10_000).map(|_| super::unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.iter().any(|&u| u < 0.1) && draws.iter().any(|&u| u > 0.9));
    }
}

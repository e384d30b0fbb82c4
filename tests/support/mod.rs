//! Shared test helpers: fake servers the integration tests talk to.
#![allow(dead_code)]

pub mod logserver;

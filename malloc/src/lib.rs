//! libcorealloc.so: the C allocation API over core-alloc, for `LD_PRELOAD` or linking.
#![doc = include_str!("../README.md")]
#![no_std]

// Only for the panic hook installed at load (see `process`); nothing here allocates.
extern crate std;

pub mod c_api;
mod process;
mod report;

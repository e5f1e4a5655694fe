//! A `no_std` allocator core for kernels, firmware and hosts: size classes, slabs carved
//! from 2 MiB chunks, per-CPU arenas with lock-free fast paths, remote frees that never take
//! the owner's lock, large and huge paths, and empty chunks given back with a retention
//! policy.
//!
//! [`Allocator`] is generic over a [`PageProvider`](page_provider::PageProvider) (where
//! memory comes from) and a [`Platform`](platform::Platform) (which CPU or thread is
//! running); build it in a `static` with the `const fn` [`Allocator::new`] and put
//! `#[global_allocator]` on it. With the `host` feature, [`host::HostAlloc`] is the
//! ready-made Linux allocator.
//!
//! The words used throughout: a *chunk* is 2 MiB, 2 MiB-aligned, from the provider; a
//! *page* is the allocator's 4 KiB granule inside a chunk; a *slab* is a run of pages carved
//! into equal *blocks* of one *size class*; an *arena* is one slot's private state (a slot
//! is a CPU on kernels, a thread on hosts); the *central heap* is the state shared by all
//! behind one lock.
#![no_std]

#[cfg(any(test, feature = "host", feature = "testkit"))]
extern crate std;

mod allocator;
#[cfg(feature = "allocator-api2")]
mod api2;
mod arena;
#[cfg(feature = "checked")]
mod checked;
mod chunk;
mod chunk_map;
pub mod config;
mod fit;
mod heap;
mod region;
pub mod size_class;
mod slab;
mod stats;
pub mod sync;

#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use allocator::{Allocator, Misuse, MisuseHook, MisuseReport};
pub use fit::FitCounters;
pub use region::{
    COMPACT_CHUNKS, COMPACT_SLAB_MAX, Failure, FailureCounters, FailureHook, FailureReport, RegionCounters,
};
pub use stats::{ClassStats, HeapCounters, Stats};

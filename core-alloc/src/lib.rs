//! A `no_std` allocator core for kernels, firmware and hosts: size classes, slabs carved
//! from 2 MiB chunks, per-CPU arenas with lock-free fast paths, remote frees that never take
//! the owner's lock, large and huge paths, and empty chunks given back with a retention
//! policy.
//!
//! [`Allocator`] is generic over a [`PageProvider`](page_provider::PageProvider) (where
//! memory comes from) and a [`Platform`](platform::Platform) (which CPU or thread is
//! running); build it in a `static` with the `const fn` [`Allocator::new`] and put
//! `#[global_allocator]` on it. With the `host` feature, `host::HostAlloc` is the
//! ready-made Linux allocator.
//!
//! It is also the one crate a kernel depends on: [`platform`] and [`page_provider`] are
//! re-exported whole (the kernel platforms under `platform::arch::{x86_64, aarch64}`, the
//! providers under `page_provider::{fixed, bare_metal, x86_paging, aarch64_paging}`), and
//! features forward to them: `x86_64` (a provider over the `x86_64` crate's page tables),
//! `aarch64-paging` (over the `aarch64-paging` crate's), `linux` (the mmap provider),
//! `host` (the Linux host allocator), `allocator-api2` (second heaps for `Vec::new_in`).
//!
//! ```toml
//! [dependencies]
//! core-alloc = { version = "0.1", features = ["x86_64"] }
//! ```
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
mod front_cache;
mod heap;
mod large_cache;
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
/// Where memory comes from: the [`PageProvider`](page_provider::PageProvider) trait and
/// the providers (re-exported, so that a kernel needs one dependency).
pub use page_provider;
/// Which CPU or thread is running: the [`Platform`](platform::Platform) trait, the kernel
/// platforms and the host one (re-exported, so that a kernel needs one dependency).
pub use platform;
pub use region::{
    COMPACT_CHUNKS, COMPACT_SLAB_MAX, Failure, FailureCounters, FailureHook, FailureReport, RegionCounters,
};
pub use stats::{ClassStats, HeapCounters, Stats};

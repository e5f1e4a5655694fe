//! Issue 11: the library reaches the calling thread's slot with the initial-exec TLS model,
//! never through `__tls_get_addr` (which a shared library's thread-locals otherwise call on
//! every access), checked in the disassembly of the library this test run built.

mod common;

use std::process::Command;

/// The functions of `objdump -d` output that call `__tls_get_addr`, and those that read
/// through the `fs` segment (x86-64's thread pointer), each by symbol name.
fn tls_users(dump: &str) -> (Vec<&str>, Vec<&str>) {
    let (mut dynamic, mut initial_exec) = (Vec::new(), Vec::new());
    let mut function = "";
    for line in dump.lines() {
        if let Some(name) =
            line.strip_suffix(">:").and_then(|head| head.split_once(" <")).map(|(_, name)| name)
        {
            function = name;
        } else if line.contains("call") && line.contains("<__tls_get_addr") {
            dynamic.push(function);
        } else if line.contains("%fs:") {
            initial_exec.push(function);
        }
    }
    (dynamic, initial_exec)
}

/// Whether a symbol is one of this project's crates (legacy or v0 mangling).
fn ours(symbol: &str) -> bool {
    symbol.contains("core_alloc") || symbol.contains("corealloc") || matches!(symbol, "malloc" | "free")
}

#[test]
#[cfg(target_arch = "x86_64")]
fn the_slot_is_reached_without_tls_get_addr() {
    let library = common::library();
    let Ok(output) = Command::new("objdump").args(["-d", "--no-show-raw-insn"]).arg(&library).output() else {
        println!("skipped: objdump not found (Debian package binutils)");
        return;
    };
    assert!(output.status.success(), "objdump failed on {}", library.display());
    let dump = String::from_utf8_lossy(&output.stdout);
    let (dynamic, initial_exec) = tls_users(&dump);
    let ours_dynamic: Vec<_> = dynamic.iter().filter(|symbol| ours(symbol)).collect();
    assert!(ours_dynamic.is_empty(), "functions of ours call __tls_get_addr: {ours_dynamic:?}");
    assert!(
        initial_exec.iter().any(|symbol| ours(symbol)),
        "no function of ours reads the thread's slot through %fs (initial-exec)"
    );
}

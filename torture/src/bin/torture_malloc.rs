//! Runs the C torture program (`torture/c/torture.c`) under `LD_PRELOAD=libcorealloc.so`:
//! compiles it with `cc` (or `$CC`), finds the library cargo built next to this program
//! (the crate depends on `core-alloc-malloc` for that), runs it with the arguments given
//! here and exits with its status. See README.md.
#![forbid(unsafe_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const USAGE: &str = "usage: torture-malloc [--library PATH] [--seed N] [--seconds S] [--threads N] [--scenarios mix,churn,adopt,huge] [--inject-fault]";

/// libcorealloc.so as cargo built it with this program: in the same directory or its
/// `deps` directory.
fn built_library() -> Option<PathBuf> {
    let executable = std::env::current_exe().ok()?;
    let directory = executable.parent()?;
    [directory.to_path_buf(), directory.join("deps"), directory.parent()?.to_path_buf()]
        .into_iter()
        .map(|candidate| candidate.join("libcorealloc.so"))
        .find(|candidate| candidate.is_file())
}

fn compile(output: &Path) -> Result<(), String> {
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/torture.c");
    let result = Command::new(&compiler)
        .args(["-std=gnu11", "-O2", "-g", "-fno-builtin", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .arg(&source)
        .arg("-o")
        .arg(output)
        .output()
        .map_err(|error| format!("cannot run the C compiler `{compiler}`: {error}"))?;
    if !result.status.success() {
        return Err(format!(
            "`{compiler}` failed on {}:\n{}",
            source.display(),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(())
}

fn main() {
    let mut library = None;
    let mut arguments: Vec<String> = Vec::new();
    let mut given = std::env::args().skip(1);
    let mut has_seed = false;
    while let Some(argument) = given.next() {
        match argument.as_str() {
            "--library" => library = given.next().map(PathBuf::from),
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            _ => {
                has_seed |= argument == "--seed";
                arguments.push(argument);
            }
        }
    }
    // The seed is chosen here so that it can be named even when the program crashes.
    if !has_seed {
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        arguments.extend([
            "--seed".to_string(),
            (clock.as_nanos() as u64 ^ u64::from(std::process::id())).to_string(),
        ]);
    }
    let seed =
        arguments.windows(2).find(|pair| pair[0] == "--seed").map(|pair| pair[1].clone()).unwrap_or_default();
    let Some(library) = library.or_else(built_library) else {
        eprintln!("torture-malloc: libcorealloc.so not found next to this program; pass --library PATH");
        std::process::exit(2);
    };
    let directory = std::env::temp_dir().join(format!("torture-malloc-{}", std::process::id()));
    let program = directory.join("torture-c");
    let built = std::fs::create_dir_all(&directory)
        .map_err(|error| error.to_string())
        .and_then(|()| compile(&program));
    if let Err(message) = built {
        eprintln!("torture-malloc: {message}");
        std::process::exit(2);
    }
    eprintln!("torture-malloc: running {} with LD_PRELOAD={}", program.display(), library.display());
    let status = Command::new(&program)
        .args(&arguments)
        .env("LD_PRELOAD", &library)
        .env_remove("CORE_ALLOC_STATS")
        .status();
    let _ = std::fs::remove_dir_all(&directory);
    let status = status.unwrap_or_else(|error| {
        eprintln!("torture-malloc: cannot run {}: {error}", program.display());
        std::process::exit(2);
    });
    if let Some(signal) = status.signal() {
        eprintln!("torture-malloc: FAILED: the C torture was killed by signal {signal} (seed {seed})");
        std::process::exit(1);
    }
    std::process::exit(status.code().unwrap_or(1));
}

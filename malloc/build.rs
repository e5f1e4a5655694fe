//! Link options of libcorealloc.so: every symbol bound at load time, so that no lazy
//! binding (the dynamic linker's own code) runs inside `malloc`; and never unloaded, since
//! memory it handed out may outlive a `dlclose`.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,now");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=build.rs");
}

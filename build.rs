//! Rebuilds the binary whenever anything under `static/` changes, a file
//! added or removed included: release builds embed the browser app, and
//! rust-embed's `include_bytes!` alone only tracks the files that existed.
fn main() {
    println!("cargo:rerun-if-changed=static");
}

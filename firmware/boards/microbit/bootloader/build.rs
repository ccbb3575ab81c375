//! Puts memory.x on the linker search path after checking it against the flash layout (BOOT).
use std::{env, fs, path::PathBuf};

use ferry_microbit_nrf51::layout;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let memory_x = fs::read_to_string("memory.x").unwrap();
    if let Err(e) = layout::check_memory_x(&memory_x, layout::BOOT) {
        eprintln!("error: memory.x: {e}");
        std::process::exit(1);
    }
    fs::write(out.join("memory.x"), memory_x).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
}

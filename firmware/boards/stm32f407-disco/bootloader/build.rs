//! Puts `memory.x` on the linker search path after checking that its FLASH is exactly the layout's
//! bootloader region (`../flash/src/layout.rs`), and passes cortex-m-rt's `link.x` to the linker.

use std::{env, fs, path::PathBuf};

use ferry_stm32f407_flash::layout;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=memory.x");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let memory_x = fs::read_to_string("memory.x").expect("read memory.x");
    let flash = layout::memory_x_flash(&memory_x).unwrap_or_else(|e| fail(e));
    let region = (layout::BOOTLOADER.start(), layout::BOOTLOADER.size());
    if flash != region {
        fail(&format!(
            "FLASH is ORIGIN = {:#010x}, LENGTH = {} but the layout's bootloader region is \
             ORIGIN = {:#010x}, LENGTH = {} (../flash/src/layout.rs)",
            flash.0, flash.1, region.0, region.1
        ));
    }
    fs::write(out.join("memory.x"), memory_x).expect("copy memory.x into OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
}

fn fail(message: &str) -> ! {
    eprintln!("error: memory.x: {message}");
    std::process::exit(1);
}

//! Any text as the daemon's config file (`Config::parse_str`, which
//! `Config::load_file` calls with the file's text): it is refused with a
//! message or accepted, never an internal error or a panic; an accepted
//! config goes through `to_toml` (`telemctl config migrate`) unchanged.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use telem_fuzz::{check_config, CONFIG_PATH};

fuzz_target!(|data: &[u8]| {
    // `load_file` reads the file with `read_to_string`: text only.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_config(text, Path::new(CONFIG_PATH));
});

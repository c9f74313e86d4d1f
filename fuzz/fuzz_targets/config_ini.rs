//! Any text as a legacy `telemetrics.conf` (INI, `[settings]`,
//! host/core/src/config/ini.rs), through the same loader: the input is put
//! after a `[settings]` line so the INI reader always takes it. Refused
//! with a message or accepted, never a panic; an accepted config is read
//! as INI and goes through `to_toml` (`telemctl config migrate`, which
//! turns a legacy file into TOML) unchanged.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use telem_core::config::ConfigFormat;
use telem_fuzz::check_config;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let text = format!("[settings]\n{body}");
    if let Some(cfg) = check_config(&text, Path::new("/etc/telemetrics/telemetrics.conf")) {
        assert_eq!(cfg.format, Some(ConfigFormat::LegacyIni));
    }
});

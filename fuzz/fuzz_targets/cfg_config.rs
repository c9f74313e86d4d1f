//! Any bytes as the contents of the config file a native record names
//! with `CFG:`: `target_of_contents` (host/telemd/src/delivery/
//! client_config.rs), the step `target_of` takes on the bytes it read
//! after its path, ownership and size checks. The filesystem walk is not
//! fuzzed. A refusal renders as one escaped line; an accepted target is
//! an http(s) URL with a TID header name fit for HTTP.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use telem_core::config::ConfigError;
use telemd::delivery::client_config::{target_of_contents, CfgRefusal};
use telemd::delivery::post::Target;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("/etc/telemetrics/custom.conf");
    match target_of_contents(data, p) {
        Err(CfgRefusal::Invalid(ConfigError::Internal { source })) => {
            panic!("keys accepted one by one do not fit together: {source}")
        }
        Err(e) => {
            // Logged, escaped, with the record's classification.
            telem_fuzz::check_escaped(&e.to_string(), telem_core::untrusted::FIELD_CAP);
        }
        Ok(Target::File(path)) => panic!("a file:// target was accepted: {}", path.display()),
        Ok(Target::Http {
            url,
            tid_name,
            tid_value,
        }) => {
            assert!(
                url.starts_with("http://") || url.starts_with("https://"),
                "{url:?}"
            );
            // The TID header's name is sent as an HTTP header name.
            assert!(!tid_name.is_empty());
            assert!(!tid_name.contains([' ', ':']), "{tid_name:?}");
            assert_eq!(tid_value, tid_value.trim());
        }
    }
});

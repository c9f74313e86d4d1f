//! Any bytes as what a control client sends (host/telemd/src/control.rs
//! `handle`): lines of at most `MAX_REQUEST` bytes, each JSON for one
//! `telem_core::control::Request`; a line that is not UTF-8 ends the
//! connection. A request that parses serializes and parses back to itself;
//! one that does not gives the `bad request` reply, which serializes to
//! one line and reads back; a hello's client name is escaped for the log.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telem_core::control::{Request, Response, MAX_REQUEST};

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n').take(64) {
        // `lines()` of tokio's BufReader: `\n` or `\r\n` removed, and an
        // invalid UTF-8 line is an error that ends the connection.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        if line.len() > MAX_REQUEST {
            return;
        }
        let resp = match serde_json::from_str::<Request>(line) {
            Ok(req) => {
                let json = serde_json::to_string(&req).expect("requests serialize");
                assert!(!json.contains('\n'));
                let back: Request =
                    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
                assert_eq!(back, req);
                if let Request::Hello { client, .. } = &req {
                    telem_fuzz::check_escaped(client, 128);
                }
                continue;
            }
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        let out = serde_json::to_string(&resp).expect("replies serialize");
        assert!(!out.contains('\n'), "a reply must be one line: {out}");
        let back: Response = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
        assert_eq!(back, resp);
    }
});

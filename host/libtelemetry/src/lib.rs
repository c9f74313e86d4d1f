//! `libtelemetry.so.4`: the C library every native probe in the field is
//! linked against, rebuilt on this project's record rules.
//!
//! A distribution that installs this project instead of the seed keeps its
//! native probes building (same `telemetry.h`, `libtelemetry.pc`) and its
//! installed ones loading (same SONAME, the seven functions with the
//! symbol versions they were linked with). What goes on the socket is the
//! core crate's frame, checked by the core crate's rules: there is one
//! implementation of both, shared with `telemd` and `telem-record-gen`.
//!
//! - `abi`: the seven C entry points. Each checks its pointers, catches
//!   panics and answers with 0 or a negative errno value.
//! - `handles`: the records a program holds; a pointer the library did not
//!   hand out (or already took back) is refused, never dereferenced.
//! - `c_string`: C strings read with a bound, never past it.
//! - `settings`: which config file names the socket and the opt-in file.
//! - `error`: what went wrong, and the errno each cause is answered with.
//!
//! The C contract is documented in `include/telemetry.h` and
//! `man/telemetry.3`; the frame in `docs/legacy-protocol.md`.

mod abi;
mod c_string;
mod error;
mod handles;
mod settings;

pub use abi::{
    tm_create_record, tm_free_record, tm_is_opted_in, tm_send_record, tm_set_config_file,
    tm_set_event_id, tm_set_payload,
};
pub use error::TmError;
pub use handles::{TelemRecord, TelemRef};

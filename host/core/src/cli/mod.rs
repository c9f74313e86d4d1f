//! The command lines of the programs, kept in the library so the
//! binaries and the man page and shell completion generator (in telemctl)
//! share one
//! definition.

pub mod crash_handler;
pub mod record_gen;
pub mod telemctl;
pub mod telemd;

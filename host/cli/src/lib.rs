//! The command lines of the programs other than `telemctl`, each parsed
//! by its program and read by `telemctl generate-docs` for the man pages
//! and shell completions, so the two never drift. `telemctl`'s own verbs
//! are defined beside their handlers in `telemctl/src/commands/`.

pub mod crash_handler;
pub mod record_gen;
pub mod telemd;

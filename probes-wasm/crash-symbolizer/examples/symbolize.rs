//! Native driver for development and benchmarks: prints the payload the
//! probe would send for a core.
//! `cargo run --release --example symbolize -- CORE [EXE] [DEBUG_ROOT]`

use crash_symbolizer::{analyze, modules::Lookup, CrashFacts, Options};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(core) = args.first() else {
        eprintln!("usage: symbolize CORE [EXE] [DEBUG_ROOT]");
        std::process::exit(2);
    };
    let mut lookup = Lookup {
        exe: args.get(1).map(Into::into),
        ..Lookup::default()
    };
    if let Some(root) = args.get(2) {
        lookup.debug_roots.push(root.into());
    }
    let opts = Options {
        lookup,
        ..Options::default()
    };
    let f = std::fs::File::open(core).expect("open core");
    match analyze(&f, &CrashFacts::default(), &opts) {
        Ok(r) => {
            print!("{}", r.payload());
            for t in &r.threads {
                for (i, fr) in t.frames.iter().enumerate() {
                    eprintln!("{} #{i} {:#x} {}", t.tid, fr.pc, fr.how.label());
                }
            }
            for p in &r.module_problems {
                eprintln!("module: {p}");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

use crash_symbolizer::frame_cache::{EntryStore, FrameCache};
use crash_symbolizer::modules::Lookup;
use crash_symbolizer::{analyze_cached, CrashFacts, Options};
use std::collections::HashMap;
use std::time::Instant;
#[derive(Default)]
struct Map(HashMap<String, Vec<u8>>);
impl EntryStore for Map {
    fn get(&mut self, k: &str) -> Option<Vec<u8>> {
        self.0.get(k).cloned()
    }
}
fn main() {
    let core = std::env::args().nth(1).unwrap();
    let exe = std::env::args().nth(2).unwrap();
    let mut store = Map::default();
    for _ in 0..5 {
        let t = Instant::now();
        let f = std::fs::File::open(&core).unwrap();
        let opts = Options {
            lookup: Lookup {
                exe: Some(exe.clone().into()),
                ..Lookup::default()
            },
            ..Options::default()
        };
        let mut c = FrameCache::new(&mut store);
        let r = analyze_cached(&f, &CrashFacts::default(), &opts, &mut c).unwrap();
        let (h, m) = (c.hits, c.misses);
        let (_, changed) = c.finish();
        let p = r.payload();
        eprintln!("{:?} {} hits {h} misses {m}", t.elapsed(), p.len());
        store.0.extend(changed);
    }
}

//! What a component may look like before it is compiled. Compiling runs in
//! the daemon, and Cranelift's memory grows with the size of the largest
//! function (a 1.75 MB straight-line function took it to 970 MB); an
//! instance's context grows with its globals (16 bytes each, outside any
//! linear memory, so outside the store's memory budget). Both are bounded
//! here, by reading the component's sections, before anything is compiled
//! or instantiated.

use thiserror::Error;
use wasmparser::{Parser, Payload};

/// Default largest function body, in bytes of wasm code
/// (`max_function_bytes`). Rust probes built with `opt-level = "s"` stay
/// far below (see the test with the shipped ones); a Python component's
/// interpreter loop is about 420 KiB.
pub const MAX_FUNCTION_BODY: usize = 128 * 1024;
/// Functions one core module may define.
pub const MAX_FUNCTIONS_PER_MODULE: u32 = 50_000;
/// Globals one core module may define.
pub const MAX_GLOBALS_PER_MODULE: u32 = 10_000;
/// Core modules in a component, nested ones included.
pub const MAX_CORE_MODULES: usize = 64;

/// Why a component was refused before compiling.
#[derive(Debug, Error)]
pub enum ShapeError {
    /// Not a component or module wasmparser can read.
    #[error("unreadable")]
    Parse(#[from] wasmparser::BinaryReaderError),
    /// A function body over the cap (`max_function_bytes`).
    #[error("a function of {0} bytes (at most {1}: max_function_bytes)")]
    FunctionBody(usize, usize),
    /// A module with over [`MAX_FUNCTIONS_PER_MODULE`] functions.
    #[error("a module of {0} functions (at most {MAX_FUNCTIONS_PER_MODULE})")]
    Functions(u32),
    /// A module with over [`MAX_GLOBALS_PER_MODULE`] globals.
    #[error("a module of {0} globals (at most {MAX_GLOBALS_PER_MODULE})")]
    Globals(u32),
    /// Over [`MAX_CORE_MODULES`] core modules.
    #[error("over {MAX_CORE_MODULES} core modules")]
    Modules,
}

/// The largest of each dimension found, for the refusal message and the
/// test against the shipped probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Largest function body in bytes.
    pub largest_function: usize,
    /// Most functions in one module.
    pub most_functions: u32,
    /// Most globals in one module.
    pub most_globals: u32,
    /// Core modules, nested ones included.
    pub modules: usize,
}

/// Reads `bytes` section by section (nested modules and components
/// included) and refuses the first dimension over its cap; functions over
/// `max_function_body` bytes.
pub fn check(bytes: &[u8], max_function_body: usize) -> Result<Shape, ShapeError> {
    let mut shape = Shape::default();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::ModuleSection { .. } => {
                shape.modules += 1;
                if shape.modules > MAX_CORE_MODULES {
                    return Err(ShapeError::Modules);
                }
            }
            Payload::FunctionSection(r) => {
                shape.most_functions = shape.most_functions.max(r.count());
                if r.count() > MAX_FUNCTIONS_PER_MODULE {
                    return Err(ShapeError::Functions(r.count()));
                }
            }
            Payload::GlobalSection(r) => {
                shape.most_globals = shape.most_globals.max(r.count());
                if r.count() > MAX_GLOBALS_PER_MODULE {
                    return Err(ShapeError::Globals(r.count()));
                }
            }
            Payload::CodeSectionEntry(body) => {
                let len = body.range().len();
                shape.largest_function = shape.largest_function.max(len);
                if len > max_function_body {
                    return Err(ShapeError::FunctionBody(len, max_function_body));
                }
            }
            _ => {}
        }
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component_with(module: &str) -> Vec<u8> {
        wat::parse_str(format!("(component (core module {module}))")).unwrap()
    }

    #[test]
    fn huge_functions_and_many_globals_are_refused() {
        let body = "(drop (i32.const 1))".repeat(MAX_FUNCTION_BODY / 3 + 10);
        let func = component_with(&format!("(func {body})"));
        let e = check(&func, MAX_FUNCTION_BODY).unwrap_err();
        assert!(
            matches!(e, ShapeError::FunctionBody(n, MAX_FUNCTION_BODY) if n > MAX_FUNCTION_BODY),
            "{e}"
        );
        // An admin may allow more (max_function_bytes).
        assert!(check(&func, 2 * MAX_FUNCTION_BODY).is_ok());
        let globals = "(global i32 (i32.const 0))".repeat(MAX_GLOBALS_PER_MODULE as usize + 1);
        let e = check(&component_with(&globals), MAX_FUNCTION_BODY).unwrap_err();
        assert!(matches!(e, ShapeError::Globals(10_001)), "{e}");
        let modules = "(core module)".repeat(MAX_CORE_MODULES + 1);
        let bytes = wat::parse_str(format!("(component {modules})")).unwrap();
        assert!(matches!(
            check(&bytes, MAX_FUNCTION_BODY),
            Err(ShapeError::Modules)
        ));
        assert!(check(b"\0asm\x0d\0\x01\0garbage", MAX_FUNCTION_BODY).is_err());
    }

    #[test]
    fn the_shipped_probes_fit_with_room_to_spare() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../probes-wasm/target/wasm32-wasip2/release");
        for name in ["hello", "crash_symbolizer", "sandbox_test"] {
            let Ok(bytes) = std::fs::read(dir.join(format!("{name}.wasm"))) else {
                // The unit tests may run before the components are built;
                // the end-to-end tests load them through this check.
                continue;
            };
            let s = check(&bytes, MAX_FUNCTION_BODY).unwrap();
            assert!(s.largest_function * 4 <= MAX_FUNCTION_BODY, "{name}: {s:?}");
            assert!(
                s.most_functions * 4 <= MAX_FUNCTIONS_PER_MODULE,
                "{name}: {s:?}"
            );
            assert!(
                s.most_globals * 4 <= MAX_GLOBALS_PER_MODULE,
                "{name}: {s:?}"
            );
            eprintln!("{name}: {s:?}");
        }
    }
}

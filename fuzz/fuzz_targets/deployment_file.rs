//! The file pipeline, as `serve` and `validate` run it on every save: bytes → `spec::parse_bytes`
//! (size, UTF-8, YAML, validation) → `app::compile` (translate and encode). Any file must give
//! a spec or a list of problems, never a panic, and a file that validates must compile, to the
//! same config version every time.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match cutover::spec::parse_bytes("fuzz.yaml", data) {
        Ok(_) => {
            let text = std::str::from_utf8(data).expect("parse_bytes accepted it as UTF-8");
            let compile = || match cutover::app::compile("fuzz.yaml", text) {
                Ok(snapshot) => snapshot.version,
                Err(err) => panic!("a file that validates does not compile:\n{err}"),
            };
            // The same file, the same config version (Envoys reconnecting to a restarted
            // cutover rely on it).
            assert_eq!(compile(), compile(), "two compilations of one file differ");
        }
        // Messages are built for people; building them must not panic either.
        Err(err) => assert!(!err.to_string().is_empty(), "a rejection without a message"),
    }
});

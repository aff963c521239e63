//! Replays every input under fuzz/regressions/<target>/ (crashes the fuzzers
//! found, kept after the fix) through the same code the fuzz targets run:
//! each must return, with a result or an error, and never panic.

#[allow(dead_code)]
#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

#[test]
fn fuzz_findings_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for target in targets::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for path in files {
            let data = std::fs::read(&path).unwrap();
            let name = path.display().to_string();
            let ok = std::panic::catch_unwind(|| targets::run(target, &data));
            assert!(ok.is_ok(), "{name} panics again");
            replayed += 1;
        }
    }
    println!("replayed {replayed} fuzz findings");
}

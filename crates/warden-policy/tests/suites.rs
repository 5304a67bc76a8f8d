//! Evaluation semantics pinned as data: every `tests/policies/*_test.yaml` suite runs
//! through the same suite code as `warden test` (`warden_policy::testing`), so the test
//! format is used by the project itself. The Rust unit tests keep only what a suite cannot
//! say (error details, positions, parsed sections).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use warden_policy::Policy;
use warden_policy::testing::Suite;

#[test]
fn every_policy_suite_passes() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policies");
    let mut suites: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_test.yaml"))
        .collect();
    suites.sort();
    assert!(!suites.is_empty());
    let (mut passed, mut failed) = (0, 0);
    for path in &suites {
        let suite = Suite::parse(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        let policy_path = path.parent().unwrap().join(&suite.policy);
        let policy = Policy::parse(&std::fs::read_to_string(&policy_path).unwrap())
            .unwrap_or_else(|e| panic!("{}:\n{e}", policy_path.display()));
        for result in suite.run(&policy) {
            if result.passed() {
                passed += 1;
            } else {
                failed += 1;
                println!(
                    "FAIL {}:{} {}\n  {}",
                    path.file_name().unwrap().to_string_lossy(),
                    result.line,
                    result.name,
                    result.failures.join("\n  ")
                );
                if let Some(f) = &result.decision.failure {
                    println!("  evaluation error in `{}`: {}", f.rule, f.detail);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    assert_eq!(failed, 0, "{failed} policy test cases failed");
}

//! `write_atomic`: the target holds either the old or the new bytes, never a mix, and a failed
//! write leaves no temporary file behind.

use flexp::fsutil::write_atomic;

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flexp-fsutil-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn replaces_the_target_and_leaves_no_temporary() {
    let d = dir("replace");
    let f = d.join("report.json");
    write_atomic(&f, b"old").unwrap();
    write_atomic(&f, b"new contents").unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"new contents");
    let names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("report.json")],
        "{names:?}"
    );
}

#[test]
fn a_failed_rename_keeps_the_target_and_removes_the_temporary() {
    let d = dir("fail");
    // The target is a non-empty folder: the rename over it fails.
    let target = d.join("out");
    std::fs::create_dir_all(target.join("keep")).unwrap();
    let e = write_atomic(&target, b"data").unwrap_err().to_string();
    assert!(e.contains("out"), "the error names the path: {e}");
    assert!(target.join("keep").exists(), "the target is untouched");
    let names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("out")],
        "temporary left: {names:?}"
    );
    let e = write_atomic(&d.join("missing/x.json"), b"data")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
}

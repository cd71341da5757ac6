//! Hostile input to zib-core's parsers (issue 17): the manifest parser (a hostile bucket), the
//! state parser (a damaged disk), the config parser and the dataset/snapshot name checks, fed
//! random bytes and random mutations of real files. Nothing may panic; what is accepted must be
//! consistent; names that could be taken for an option or break `zfs list`'s output are refused
//! before any command runs. Proptest with fixed case counts (printed; `cargo fuzz` needs
//! nightly).

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use zib_core::{Config, DatasetName, DatasetState, Manifest, SnapName};

const CASES: u32 = 3000;

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig { cases: CASES, failure_persistence: None, ..Default::default() })
}

/// A mutation of `seed`: a few byte flips, a cut, an insertion of random bytes.
fn mutated(seed: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
        any::<bool>(),
        any::<prop::sample::Index>(),
        proptest::collection::vec(any::<u8>(), 0..12),
    )
        .prop_map(move |(flips, cut, do_cut, at, insert)| {
            let mut v = seed.to_vec();
            for (i, b) in flips {
                let i = i.index(v.len());
                v[i] = b;
            }
            let at = at.index(v.len());
            v.splice(at..at, insert);
            if do_cut {
                v.truncate(cut.index(v.len() + 1));
            }
            v
        })
}

const MANIFEST: &[u8] = include_bytes!("fixtures/manifest-v1.json");
const MANIFEST_ADOPTED: &[u8] = include_bytes!("fixtures/manifest-v2-adopted.json");
const STATE: &[u8] = include_bytes!("fixtures/state-v1.json");
const CONFIG: &[u8] = include_bytes!("../../../config.example.toml");

#[test]
fn mutated_and_random_manifests_are_refused_or_consistent() {
    let accepted = std::cell::Cell::new(0u32);
    for seed in [MANIFEST, MANIFEST_ADOPTED] {
        let strategy = prop_oneof![mutated(seed), proptest::collection::vec(any::<u8>(), 0..400)];
        runner()
            .run(&strategy, |bytes| {
                match Manifest::from_json("k", &bytes) {
                    Ok(m) => {
                        accepted.set(accepted.get() + 1);
                        prop_assert!(m.check().is_ok());
                        // What is accepted is what it says: it round-trips.
                        prop_assert_eq!(Manifest::from_json("k", &m.to_json()).unwrap(), m);
                    }
                    Err(e) => prop_assert!(e.to_string().starts_with("manifest k: "), "{e}"),
                }
                Ok(())
            })
            .unwrap();
    }
    println!(
        "manifest parser: {} cases, {} accepted (all consistent), no panic",
        2 * CASES,
        accepted.get()
    );
}

#[test]
fn mutated_and_random_state_files_are_refused_or_consistent() {
    let ds = DatasetName::new("tank/photos").unwrap();
    let accepted = std::cell::Cell::new(0u32);
    let strategy = prop_oneof![mutated(STATE), proptest::collection::vec(any::<u8>(), 0..400)];
    runner()
        .run(&strategy, |bytes| {
            match DatasetState::from_json("/var/lib/zib/s.json", &bytes, &ds) {
                Ok(s) => {
                    accepted.set(accepted.get() + 1);
                    prop_assert_eq!(&s.dataset, &ds);
                    let again = DatasetState::from_json("p", &s.to_json(), &ds).unwrap();
                    prop_assert_eq!(again, s);
                }
                Err(e) => prop_assert!(e.to_string().contains("/var/lib/zib/s.json"), "{e}"),
            }
            Ok(())
        })
        .unwrap();
    println!("state parser: {CASES} cases, {} accepted (all consistent), no panic", accepted.get());
}

#[test]
fn mutated_configs_are_refused_with_the_file_named_or_valid() {
    let accepted = std::cell::Cell::new(0u32);
    runner()
        .run(&mutated(CONFIG), |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            match Config::parse(&text, Path::new("/etc/zib/zibd.toml")) {
                Ok(_) => accepted.set(accepted.get() + 1),
                Err(e) => prop_assert!(e.to_string().contains("/etc/zib/zibd.toml"), "{e}"),
            }
            Ok(())
        })
        .unwrap();
    println!("config parser: {CASES} mutated configs, {} still valid, no panic", accepted.get());
}

/// Characters a name may hold: ZFS's own set (letters, digits, `_ - . :` and space).
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | ' ')
}

#[test]
fn accepted_names_can_never_be_taken_for_an_option_or_break_zfs_output() {
    let strategy = prop_oneof![
        "\\PC{0,40}",
        "[a-z]{1,6}(/[-a-z0-9 .:_@#%\n\t]{0,8}){0,4}",
        "[-a-z0-9 .:_@#%\n]{0,20}",
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let accepted = std::cell::Cell::new(0u32);
    runner()
        .run(&strategy, |s| {
            if let Ok(d) = DatasetName::new(&s) {
                accepted.set(accepted.get() + 1);
                prop_assert!(d.as_str().chars().all(|c| name_char(c) || c == '/'), "{s:?}");
                prop_assert!(d.as_str().starts_with(|c: char| c.is_ascii_alphabetic()), "{s:?}");
                prop_assert!(d.as_str().split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                prop_assert!(d.as_str().len() <= 255);
            }
            if let Ok(n) = SnapName::new(&s) {
                accepted.set(accepted.get() + 1);
                prop_assert!(n.as_str().chars().all(name_char), "{s:?}");
                prop_assert!(!n.as_str().starts_with('-'), "{s:?}");
                prop_assert!(!n.as_str().is_empty());
            }
            Ok(())
        })
        .unwrap();
    println!(
        "name checks: {CASES} generated names, {} accepted (all within ZFS's set)",
        accepted.get()
    );
}

#[test]
fn hostile_names_are_refused_with_the_reason() {
    let long = "a".repeat(300);
    let cases: &[(&str, bool, &str)] = &[
        // (name, as a dataset (else a snapshot), what the error says)
        ("-rf", true, "the pool name must start with a letter"),
        ("tank/-o/x", true, ""),
        ("tank/photos@snap", true, "no '@' or '#'"),
        ("tank/photos#bm", true, "no '@' or '#'"),
        ("tank/%recv", true, "character '%' is not allowed"),
        ("tank/a\nb", true, "character '\\n' is not allowed"),
        ("tank/a\tb", true, "character '\\t' is not allowed"),
        ("tank/../etc", true, "'.' and '..' are not valid components"),
        ("tank//photos", true, "empty component"),
        ("tank/\u{fffd}", true, "character '\u{fffd}' is not allowed"),
        (&long, true, "longer than"),
        ("-o", false, "must not start with '-'"),
        ("a/b", false, "no '/', '@' or '#'"),
        ("a\nb", false, "character '\\n' is not allowed"),
        ("", false, "empty component"),
        (&long, false, "longer than 200 bytes"),
    ];
    for (name, dataset, says) in cases {
        let e = if *dataset {
            match DatasetName::new(name) {
                Ok(d) => {
                    // A component may start with '-': the full name never does, so it is
                    // never an option to zfs.
                    assert!(says.is_empty() && !d.as_str().starts_with('-'), "{name:?} accepted");
                    continue;
                }
                Err(e) => e.to_string(),
            }
        } else {
            SnapName::new(name).map(|_| ()).expect_err(name).to_string()
        };
        assert!(!says.is_empty() && e.contains(says), "{name:?}: {e}");
    }
}

/// Invalid configs, each with the error it must give: the file, and the line and key for a
/// syntax or type error (TOML's span), the dataset and key for a rule zib checks after parsing.
#[test]
fn invalid_configs_name_the_file_line_and_key() {
    let base = "[target]\nbucket = \"bkt\"\n\n[[dataset]]\nname = \"tank/photos\"\nschedule = \"0 0 3 * * *\"\n";
    let cases: &[(&str, &[&str])] = &[
        ("[target]\nbucket = \"bkt\"\nbuckett = \"c\"\n", &["line 3", "unknown field `buckett`"]),
        ("[target]\nbucket = 5\n", &["line 2", "invalid type: integer `5`, expected a string"]),
        ("[target\nbucket = \"bkt\"\n", &["line 1"]),
        ("[daemon]\nsocket = \"/run/zib.sock\"\n", &["missing field `target`"]),
        (&format!("{base}chunk_size = \"12 parsecs\"\n"), &["line 7", "chunk_size"]),
        (&format!("{base}storage_class = \"COLD\"\n"), &["line 7", "storage_class"]),
        (&format!("{base}name = \"tank/other\"\n"), &["line 7", "duplicate key `name`"]),
        (
            "[target]\nbucket = \"bkt\"\n\n[[dataset]]\nname = \"-rf\"\nschedule = \"0 0 3 * * *\"\n",
            &["line 5", "the pool name must start with a letter"],
        ),
        (
            "[target]\nbucket = \"bkt\"\n\n[[dataset]]\nname = \"tank/x\"\nschedule = \"every day\"\n",
            &["line 6", "schedule"],
        ),
        (
            &format!("{base}\n[[dataset]]\nname = \"tank/photos\"\nschedule = \"0 0 3 * * *\"\n"),
            &["dataset tank/photos is listed twice ([[dataset]] #2)"],
        ),
    ];
    let path = Path::new("/etc/zib/zibd.toml");
    for (text, says) in cases {
        let e = Config::parse(text, path).expect_err(text).to_string();
        assert!(e.contains("/etc/zib/zibd.toml"), "{e}");
        for s in *says {
            assert!(e.contains(s), "config\n{text}\nerror does not say {s:?}:\n{e}");
        }
    }
    println!("config corpus: {} invalid configs, each named by file and line or key", cases.len());
}

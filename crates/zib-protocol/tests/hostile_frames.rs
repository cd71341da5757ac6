//! Hostile input to the control socket's decoders (issue 17): random bytes and random JSON
//! through the frame reader and the request decoder, under a counting allocator. Nothing may
//! panic, a declared length above the cap must cost nothing, and a request is accepted only
//! when it is one this protocol knows. (`cargo fuzz` needs nightly; these are proptest runs
//! with fixed case counts, printed at the end of each test.)

#![allow(unsafe_code)] // the counting allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use zib_protocol::{
    MAX_FRAME_LEN, Request, decode_request, encode_request,
    frame::{FrameError, read_frame_capped},
};

/// Bytes currently allocated by this thread and its peak since the last [`reset_peak`]. Per
/// thread: the tests of this binary run at once, and a global count charged one test with
/// another's allocations (a refused frame "allocated 5280 bytes" while a proptest ran beside
/// it). Each test reads frames on its own thread (a current-thread runtime).
struct Counting;
thread_local! {
    static NOW: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = NOW.try_with(|n| {
            let now = n.get() + l.size();
            n.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
        // SAFETY: same layout, as the caller requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // Memory another thread allocated may be freed here: never below zero.
        let _ = NOW.try_with(|n| n.set(n.get().saturating_sub(l.size())));
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn reset_peak() -> usize {
    let now = NOW.with(Cell::get);
    PEAK.with(|p| p.set(now));
    now
}

fn peak() -> usize {
    PEAK.with(Cell::get)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

const CASES: u32 = 4000;

fn config() -> Config {
    Config { cases: CASES, failure_persistence: None, ..Config::default() }
}

#[test]
fn random_bytes_through_the_frame_reader_never_panic_nor_exceed_the_cap() {
    let rt = rt();
    let mut runner = TestRunner::new(config());
    runner
        .run(&(proptest::collection::vec(any::<u8>(), 0..600), 0u32..512), |(bytes, cap)| {
            let mut r: &[u8] = &bytes;
            match rt.block_on(read_frame_capped(&mut r, cap)) {
                Ok(None) => prop_assert!(bytes.is_empty()),
                Ok(Some(body)) => {
                    let declared = u32::from_be_bytes(bytes[..4].try_into().unwrap());
                    prop_assert_eq!(body.len() as u32, declared);
                    prop_assert!(declared <= cap);
                    prop_assert_eq!(&body[..], &bytes[4..4 + body.len()]);
                }
                Err(FrameError::TooLarge { len, max }) => {
                    prop_assert!(len > u64::from(max));
                    prop_assert_eq!(max, cap);
                }
                Err(FrameError::Truncated { got, expected }) => prop_assert!(got < expected),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
            Ok(())
        })
        .unwrap();
    println!("frame reader: {CASES} random inputs, no panic");
}

#[test]
fn a_huge_declared_length_allocates_nothing_for_its_body() {
    let rt = rt();
    for declared in [MAX_FRAME_LEN + 1, u32::MAX / 2, u32::MAX] {
        let mut input = declared.to_be_bytes().to_vec();
        input.extend(b"{\"protocol\":1}");
        let mut r: &[u8] = &input;
        let before = reset_peak();
        let e = rt.block_on(zib_protocol::frame::read_frame(&mut r)).unwrap_err();
        let grew = peak() - before;
        assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
        assert!(grew < 4096, "a refused {declared}-byte frame allocated {grew} bytes");
    }
    // A frame at the cap is read with one allocation of its size, not more.
    let mut input = MAX_FRAME_LEN.to_be_bytes().to_vec();
    input.resize(4 + MAX_FRAME_LEN as usize, b' ');
    let mut r: &[u8] = &input;
    let before = reset_peak();
    let body = rt.block_on(zib_protocol::frame::read_frame(&mut r)).unwrap().unwrap();
    let grew = peak() - before;
    assert_eq!(body.len(), MAX_FRAME_LEN as usize);
    assert!(grew <= 2 * MAX_FRAME_LEN as usize, "a 1 MiB frame peaked at {grew} bytes");
}

/// Random JSON values, nested a few levels.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        prop_oneof![
            Just("status".to_owned()),
            Just("trigger".to_owned()),
            Just("restore_start".to_owned()),
            Just("prune_now".to_owned()),
            Just("tank/photos".to_owned()),
            Just("-rf".to_owned()),
            ".{0,12}",
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("dataset".to_owned()),
                    Just("wait".to_owned()),
                    Just("full".to_owned()),
                    Just("dry_run".to_owned()),
                    Just("id".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn random_requests_are_decoded_or_refused_never_panic() {
    let mut runner = TestRunner::new(config());
    let accepted = std::cell::Cell::new(0u32);
    runner
        .run(&(json(), 0u64..4), |(request, protocol)| {
            let body =
                serde_json::to_vec(&serde_json::json!({"protocol": protocol, "request": request}))
                    .unwrap();
            match decode_request(&body) {
                Ok(frame) => {
                    accepted.set(accepted.get() + 1);
                    prop_assert!(
                        protocol >= 1 && protocol <= u64::from(zib_protocol::PROTOCOL_VERSION)
                    );
                    let t = request["type"].as_str().unwrap_or_default();
                    prop_assert!(Request::KNOWN_TYPES.contains(&t), "accepted unknown type {t}");
                    prop_assert_eq!(frame.request.type_name(), t);
                    // What was accepted re-encodes to a frame that decodes to the same request.
                    let again = decode_request(&encode_request(&frame.request)).unwrap();
                    prop_assert_eq!(again.request, frame.request);
                }
                Err(r) => prop_assert!(!r.message.is_empty()),
            }
            Ok(())
        })
        .unwrap();
    println!(
        "request decoder: {CASES} random JSON requests, {} accepted, no panic",
        accepted.get()
    );
}

#[test]
fn random_bytes_and_deep_nesting_are_refused_as_invalid() {
    let mut runner = TestRunner::new(config());
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
            let _ = decode_request(&bytes);
            let _ = zib_protocol::decode_response(&bytes);
            Ok(())
        })
        .unwrap();
    // 100,000 levels of nesting: serde_json's recursion limit refuses it, no stack overflow.
    let deep =
        format!("{{\"protocol\":1,\"request\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let e = decode_request(deep.as_bytes()).unwrap_err();
    assert!(e.message.contains("recursion limit"), "{}", e.message);
    println!("request decoder: {CASES} random byte strings and a 100,000-deep nesting, no panic");
}

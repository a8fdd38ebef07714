//! A spool folder at start: a file named like a request holds the fuzzer's bytes. Opening the
//! spool and taking its oldest entry either yields a request or removes the file, counted, never
//! a panic; a good entry next to it is still there.
#![no_main]

use endpoint_metrics_agent::sinks::spool::Spool;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("00000000000000000001-000000000001.json"),
        data,
    )
    .unwrap();
    let Ok(mut spool) = Spool::open(dir.path(), 64 << 20) else {
        return;
    };
    // Every entry is read once: a bad one is dropped, a good one stays.
    while let Some((key, _item)) = spool.oldest(|_| false) {
        spool.remove(key);
    }
    assert!(spool.is_empty());
});

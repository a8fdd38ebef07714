//! Builds the fake NVML driver library (tests/fixtures/fake_nvml/fake_nvml.c) with the system C
//! compiler, once per set of defines, and hands each test its own copy: one file loaded twice in a
//! process shares its state, so parallel tests need separate files. The copy's script is
//! "<library>.script" (see the C file for the directives).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The C source of the fake library, relative to the package root.
pub const SOURCE: &str = "tests/fixtures/fake_nvml/fake_nvml.c";

/// A fixture's path: under the package root this was built in, or else under the current
/// folder (a test binary copied to another machine and run from a checkout there).
pub fn fixture(relative: &str) -> PathBuf {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    if built_in.exists() {
        built_in
    } else {
        PathBuf::from(relative)
    }
}

/// Compiles one C file with the system compiler ($CC, default cc).
pub fn compile(source: &str, out: &Path, args: &[&str], defines: &[&str]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-O1", "-Wall", "-Werror"])
        .args(args)
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg("-o")
        .arg(out)
        .arg(fixture(source))
        .status()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}` (set CC): {e}"));
    assert!(status.success(), "compiling {source} failed");
}

/// One test's copy of the fake library and its script.
pub struct FakeNvml {
    _dir: tempfile::TempDir,
    library: PathBuf,
}

/// Built libraries by their defines, each in a folder kept for the whole test process.
type Built = HashMap<Vec<String>, (tempfile::TempDir, PathBuf)>;

fn built(defines: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    let key: Vec<String> = defines.iter().map(|d| d.to_string()).collect();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.get(&key) {
        return path.clone();
    }
    let dir = tempfile::tempdir().expect("temp dir for the fake NVML build");
    let out = dir.path().join("libnvidia-ml.so.1");
    compile(
        SOURCE,
        &out,
        &["-shared", "-fPIC", "-fvisibility=hidden"],
        defines,
    );
    built.insert(key, (dir, out.clone()));
    out
}

impl FakeNvml {
    /// A fresh copy of the fake library with an empty script (zero GPUs).
    pub fn new() -> FakeNvml {
        FakeNvml::with_defines(&[])
    }

    /// A fresh copy built with these C defines (e.g. "FAKE_NVML_NO_MEMORY_V2").
    pub fn with_defines(defines: &[&str]) -> FakeNvml {
        let source = built(defines);
        let dir = tempfile::tempdir().expect("temp dir for the fake NVML copy");
        let library = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(&source, &library).expect("copying the fake NVML library");
        let fake = FakeNvml { _dir: dir, library };
        fake.script("");
        fake
    }

    pub fn library(&self) -> &Path {
        &self.library
    }

    pub fn library_str(&self) -> String {
        self.library.to_string_lossy().into_owned()
    }

    /// The file the `calls` directive of [`FakeNvml::calls_directive`] appends to.
    pub fn calls_path(&self) -> PathBuf {
        let mut path = self.library.clone().into_os_string();
        path.push(".calls");
        PathBuf::from(path)
    }

    /// A script line that has this copy count its calls into [`FakeNvml::calls_path`].
    pub fn calls_directive(&self) -> String {
        format!("calls {}\n", self.calls_path().display())
    }

    /// The calls counted so far, one entry per line the library wrote: each line is written at
    /// an `nvmlDeviceGetCount_v2` (the start of a sample) and holds the calls since the previous
    /// one, so a sample's calls are in the line written when the next sample starts.
    pub fn calls(&self) -> Vec<Calls> {
        let text = std::fs::read_to_string(self.calls_path()).unwrap_or_default();
        // A line being written has no newline yet: not counted until it is whole.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole.lines().map(Calls::parse).collect()
    }

    /// Replaces the script atomically (write then rename), so the library never reads half of it.
    pub fn script(&self, text: &str) {
        let mut target = self.library.clone().into_os_string();
        target.push(".script");
        let mut tmp = target.clone();
        tmp.push(".tmp");
        std::fs::write(&tmp, text).expect("writing the fake NVML script");
        std::fs::rename(&tmp, &target).expect("replacing the fake NVML script");
    }
}

/// Script lines for `n` GPUs: GPU i at utilization 10 + i, 2 GiB x (i + 1) used of 80 GiB.
pub fn devices(n: u32) -> String {
    (0..n)
        .map(|i| {
            format!(
                "device {i} uuid=GPU-test-{i} util={} mem_used={} mem_total={}\n",
                10 + i,
                (2u64 << 30) * u64::from(i + 1),
                80u64 << 30
            )
        })
        .collect()
}

/// One line of the fake library's call counts: calls by "symbol" (not a device call) or
/// "symbol/device".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Calls(pub HashMap<String, u64>);

impl Calls {
    fn parse(line: &str) -> Calls {
        let counts = line
            .split_whitespace()
            .filter_map(|token| {
                let (key, n) = token.split_once('=')?;
                Some((key.to_string(), n.parse().ok()?))
            })
            .collect();
        Calls(counts)
    }

    /// Calls of `symbol` on GPU `device`.
    pub fn on(&self, symbol: &str, device: u32) -> u64 {
        self.0
            .get(&format!("{symbol}/{device}"))
            .copied()
            .unwrap_or(0)
    }

    /// Calls of `symbol` on any GPU, or not about one.
    pub fn all(&self, symbol: &str) -> u64 {
        self.0
            .iter()
            .filter(|(key, _)| key.split('/').next() == Some(symbol))
            .map(|(_, n)| n)
            .sum()
    }

    /// True for the line of a sample that listed processes.
    pub fn enumerated(&self) -> bool {
        self.all("nvmlDeviceGetComputeRunningProcesses_v3") > 0
    }
}

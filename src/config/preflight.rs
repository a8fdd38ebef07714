//! What `run` needs from the host that the file alone cannot say: the `/proc` it reads, the
//! folder its EMF file or its spool lives in. `check-config` (systemd's `ExecStartPre`) and `run`
//! both check it before anything starts, so a path that cannot work is a configuration error
//! (exit 78, which the unit does not retry) in both, with the key that names it, instead of
//! "valid" from one and exit 1 (retried for ever) from the other.
//!
//! Nothing here creates or changes a file: a folder the agent would create (the spool's) only
//! needs its nearest existing parent to be a writable folder.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use super::{Config, ConfigError, EmfDestination};

/// The files of `host.proc_root` the agent cannot run without (the host collector opens them at
/// start).
const REQUIRED_PROC_FILES: [&str; 2] = ["stat", "meminfo"];

/// Checks the paths the configuration names; the first problem is the error.
pub fn check(config: &Config, file: &Path) -> Result<(), ConfigError> {
    check_paths(config).map_err(|(key, reason)| ConfigError {
        file: file.to_path_buf(),
        key: key.into(),
        reason,
    })
}

fn check_paths(config: &Config) -> Result<(), (&'static str, String)> {
    let proc_root = &config.host.proc_root;
    for name in REQUIRED_PROC_FILES {
        let path = proc_root.join(name);
        std::fs::File::open(&path).map_err(|e| {
            (
                "host.proc_root",
                format!(
                    "cannot read {}: {e}; allowed: the host's /proc (or where it is mounted)",
                    path.display()
                ),
            )
        })?;
    }
    let disk = &config.metrics.disk_path;
    std::fs::metadata(disk).map_err(|e| {
        (
            "metrics.disk_path",
            format!("{}: {e}; allowed: an existing path", disk.display()),
        )
    })?;
    if config.publishes_through_spool() {
        writable_folder_or_creatable(&config.output.spool_dir)
            .map_err(|reason| ("output.spool_dir", reason))?;
    } else if let EmfDestination::File(path) = &config.output.emf_destination {
        writable_file_or_creatable(path).map_err(|reason| ("output.emf_destination", reason))?;
    }
    Ok(())
}

/// A folder the agent may write in, or a path whose nearest existing parent is one (the agent
/// creates the rest).
fn writable_folder_or_creatable(dir: &Path) -> Result<(), String> {
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) if meta.is_dir() => return writable(at),
            Ok(_) => {
                return Err(format!(
                    "{} is not a folder; allowed: a folder, or a path the agent can create",
                    at.display()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                _ => return Err(format!("{}: no existing parent folder", dir.display())),
            },
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
}

/// An existing file (not a folder) the agent may append to, or a new file in an existing
/// writable folder.
fn writable_file_or_creatable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!(
            "{} is a folder; allowed: a file (\"file:/path/to/file\")",
            path.display()
        )),
        Ok(_) => writable(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match std::fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => writable(parent),
                Ok(_) => Err(format!("{} is not a folder", parent.display())),
                Err(e) => Err(format!(
                    "its folder {} cannot be used: {e}; allowed: a file in an existing folder",
                    parent.display()
                )),
            }
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Whether this process may write there (and enter it, for a folder), as the kernel would decide
/// for the user the agent runs as.
fn writable(path: &Path) -> Result<(), String> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    let mode = if path.is_dir() {
        libc::W_OK | libc::X_OK
    } else {
        libc::W_OK
    };
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::access(c_path.as_ptr(), mode) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "{} is not writable by this user: {}",
            path.display(),
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, proc_root: &Path) -> Config {
        let text = format!(
            "[endpoint]\nname = \"e\"\n[host]\nproc_root = \"{}\"\n{extra}",
            proc_root.display()
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn fake_proc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in REQUIRED_PROC_FILES {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        dir
    }

    #[test]
    fn a_missing_proc_root_is_a_config_error_naming_the_key() {
        let c = config("", Path::new("/nonexistent/proc"));
        let e = check(&c, Path::new("t.toml")).unwrap_err();
        assert_eq!(e.key, "host.proc_root");
        assert!(e.reason.contains("/nonexistent/proc/stat"), "{e}");
    }

    #[test]
    fn an_emf_file_in_a_missing_folder_is_a_config_error() {
        let proc = fake_proc();
        let c = config(
            "[output]\nemf_destination = \"file:/nonexistent/dir/emf.log\"\n",
            proc.path(),
        );
        let e = check(&c, Path::new("t.toml")).unwrap_err();
        assert_eq!(e.key, "output.emf_destination");
        assert!(e.reason.contains("/nonexistent/dir"), "{e}");

        let c = config(
            &format!(
                "[output]\nemf_destination = \"file:{}\"\n",
                proc.path().display()
            ),
            proc.path(),
        );
        let e = check(&c, Path::new("t.toml")).unwrap_err();
        assert!(e.reason.contains("is a folder"), "{e}");

        let c = config(
            &format!(
                "[output]\nemf_destination = \"file:{}/emf.log\"\n",
                proc.path().display()
            ),
            proc.path(),
        );
        check(&c, Path::new("t.toml")).unwrap();
    }

    #[test]
    fn a_spool_dir_that_is_a_file_is_a_config_error_and_a_new_one_is_fine() {
        let proc = fake_proc();
        let file = proc.path().join("stat");
        let c = config(
            &format!(
                "[output]\nformat = \"put_metric_data\"\nspool_dir = \"{}\"\n",
                file.display()
            ),
            proc.path(),
        );
        let e = check(&c, Path::new("t.toml")).unwrap_err();
        assert_eq!(e.key, "output.spool_dir");
        assert!(e.reason.contains("is not a folder"), "{e}");

        // Under a file: the nearest existing parent is not a folder either.
        let c = config(
            &format!(
                "[output]\nformat = \"put_metric_data\"\nspool_dir = \"{}/spool\"\n",
                file.display()
            ),
            proc.path(),
        );
        assert_eq!(
            check(&c, Path::new("t.toml")).unwrap_err().key,
            "output.spool_dir"
        );

        let c = config(
            &format!(
                "[output]\nformat = \"put_metric_data\"\nspool_dir = \"{}/a/b/spool\"\n",
                proc.path().display()
            ),
            proc.path(),
        );
        check(&c, Path::new("t.toml")).unwrap();
        assert!(!proc.path().join("a").exists(), "nothing is created");
    }
}

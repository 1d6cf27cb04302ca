//! `MCPGW_STDIO_COMMANDS`: which executables stdio servers may run. A stdio server entry is a
//! command line the gateway executes, so whoever holds the admin key can otherwise run anything as
//! the gateway's user. Both planes parse and apply the setting with this one type: the control
//! plane refuses such servers, the data plane refuses to start them (a tampered snapshot).
//!
//! Matching, on the host that applies it:
//! - each entry is an absolute path to an executable or a directory, or a bare name looked up in
//!   the process's `PATH` when the setting is read; entries are canonicalised (symlinks resolved);
//! - a server's `command` with a `/` is a path (a relative one is taken from the server's `cwd`,
//!   else from the process's working directory); without one it is looked up in `PATH`, the
//!   server's own `PATH` variable if it sets one, in absolute directories only;
//! - the command's canonical path must equal a file entry or lie in or under a directory entry;
//! - the server's environment may not set the dynamic loader's variables (`LD_*`, `DYLD_*`), which
//!   would load other code into any allowed executable.
//!
//! The data plane then runs exactly the file it checked (with the configured command as `argv[0]`),
//! so a later `PATH` lookup cannot pick another one.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::settings::ENV_STDIO_COMMANDS;

/// The parsed setting. The default allows any command (the setting unset).
#[derive(Debug, Clone, Default)]
pub struct StdioCommands {
    allowed: Option<Vec<Allowed>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    File(PathBuf),
    Dir(PathBuf),
}

/// An entry of the setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{ENV_STDIO_COMMANDS}: {0}")]
pub struct BadStdioCommands(String);

/// Why a stdio server's command may not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefused {
    #[error("command `{command}` is not allowed by {ENV_STDIO_COMMANDS}")]
    NotAllowed { command: String },
    #[error("command `{command}` is not allowed by {ENV_STDIO_COMMANDS}: {reason}")]
    NotFound { command: String, reason: String },
    #[error("environment variable `{name}` is not allowed while {ENV_STDIO_COMMANDS} is set (it loads other code)")]
    LoaderVariable { name: String },
}

impl StdioCommands {
    /// From the setting's value: `None` (unset) allows any command; `Some("")` allows none.
    pub fn parse(value: Option<&str>) -> Result<Self, BadStdioCommands> {
        let path = std::env::var_os("PATH");
        Self::parse_with(value, path.as_deref())
    }

    fn parse_with(value: Option<&str>, path: Option<&OsStr>) -> Result<Self, BadStdioCommands> {
        let Some(value) = value else { return Ok(Self::default()) };
        let mut allowed = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let found = if entry.contains('/') {
                if !entry.starts_with('/') {
                    return Err(BadStdioCommands(format!("`{entry}` must be an absolute path or a command name")));
                }
                PathBuf::from(entry)
            } else {
                lookup(entry, path)
                    .ok_or_else(|| BadStdioCommands(format!("`{entry}` is not an executable on PATH")))?
            };
            let canonical =
                found.canonicalize().map_err(|e| BadStdioCommands(format!("`{entry}` cannot be used: {e}")))?;
            allowed.push(if canonical.is_dir() { Allowed::Dir(canonical) } else { Allowed::File(canonical) });
        }
        Ok(Self { allowed: Some(allowed) })
    }

    /// Whether the setting restricts anything.
    pub fn is_restricted(&self) -> bool {
        self.allowed.is_some()
    }

    /// Checks a stdio server. `Ok(None)`: unrestricted, run `command` as given; `Ok(Some(file))`:
    /// run exactly `file`, the executable that was checked.
    pub fn admit(
        &self,
        command: &str,
        env: &BTreeMap<String, String>,
        cwd: Option<&str>,
    ) -> Result<Option<PathBuf>, CommandRefused> {
        let Some(allowed) = &self.allowed else { return Ok(None) };
        if let Some(name) = env.keys().find(|k| k.starts_with("LD_") || k.starts_with("DYLD_")) {
            return Err(CommandRefused::LoaderVariable { name: name.clone() });
        }
        let not_found = |reason: String| CommandRefused::NotFound { command: command.to_string(), reason };
        let found = if command.contains('/') {
            let base = match cwd {
                Some(dir) => PathBuf::from(dir),
                None => std::env::current_dir().map_err(|e| not_found(format!("no working directory: {e}")))?,
            };
            base.join(command)
        } else {
            let path = match env.get("PATH") {
                Some(p) => Some(std::ffi::OsString::from(p)),
                None => std::env::var_os("PATH"),
            };
            lookup(command, path.as_deref()).ok_or_else(|| not_found("it is not an executable on PATH".into()))?
        };
        let canonical = found.canonicalize().map_err(|e| not_found(e.to_string()))?;
        let admitted = allowed.iter().any(|a| match a {
            Allowed::File(f) => *f == canonical,
            Allowed::Dir(d) => canonical.starts_with(d),
        });
        if admitted && canonical.is_file() {
            Ok(Some(canonical))
        } else {
            Err(CommandRefused::NotAllowed { command: command.to_string() })
        }
    }
}

/// The first executable file `name` in the absolute directories of `path` (relative entries,
/// which would depend on the working directory, are skipped).
fn lookup(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = p.metadata() else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A directory with `bin/tool` (executable), `bin/data` (not executable), `other/tool`, and
    /// `link` -> `bin/tool`.
    fn layout() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for sub in ["bin", "other", "bin2"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        for (file, mode) in [("bin/tool", 0o755), ("bin/data", 0o644), ("other/tool", 0o755), ("bin2/tool", 0o755)] {
            let p = dir.path().join(file);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::os::unix::fs::symlink(dir.path().join("bin/tool"), dir.path().join("link")).unwrap();
        dir
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn unset_allows_anything_and_empty_allows_nothing() {
        let any = StdioCommands::parse_with(None, None).unwrap();
        assert!(!any.is_restricted());
        assert_eq!(any.admit("/bin/sh", &env(&[("LD_PRELOAD", "x")]), None), Ok(None));
        let none = StdioCommands::parse_with(Some(""), None).unwrap();
        assert!(none.is_restricted());
        assert!(matches!(none.admit("/bin/sh", &env(&[]), None), Err(CommandRefused::NotAllowed { .. })));
    }

    #[test]
    fn a_file_entry_allows_that_file_by_any_name_that_resolves_to_it() {
        let d = layout();
        let root = d.path().canonicalize().unwrap();
        let tool = root.join("bin/tool");
        let only = StdioCommands::parse_with(Some(tool.to_str().unwrap()), None).unwrap();
        let bin = root.join("bin");
        let path = env(&[("PATH", bin.to_str().unwrap())]);
        assert_eq!(only.admit(tool.to_str().unwrap(), &env(&[]), None), Ok(Some(tool.clone())));
        // A bare name through the server's PATH, a symlink, a relative path from `cwd`.
        assert_eq!(only.admit("tool", &path, None), Ok(Some(tool.clone())));
        assert_eq!(only.admit(root.join("link").to_str().unwrap(), &env(&[]), None), Ok(Some(tool.clone())));
        assert_eq!(only.admit("./bin/tool", &env(&[]), root.to_str()), Ok(Some(tool.clone())));
        assert_eq!(only.admit("bin/../bin/tool", &env(&[]), root.to_str()), Ok(Some(tool.clone())));
        // Another file of the same name, or one reached by a PATH that finds another first.
        let other = root.join("other/tool");
        assert!(only.admit(other.to_str().unwrap(), &env(&[]), None).is_err());
        let first_other = format!("{}:{}", root.join("other").display(), bin.display());
        assert!(only.admit("tool", &env(&[("PATH", &first_other)]), None).is_err());
        // Relative PATH entries are never searched.
        assert!(only.admit("tool", &env(&[("PATH", "bin")]), root.to_str()).is_err());
        assert!(matches!(
            only.admit("/bin/sh", &env(&[]), None),
            Err(CommandRefused::NotAllowed { command }) if command == "/bin/sh"
        ));
        assert!(matches!(only.admit("no-such-tool", &path, None), Err(CommandRefused::NotFound { .. })));
    }

    #[test]
    fn a_directory_entry_allows_files_in_and_under_it_only() {
        let d = layout();
        let root = d.path().canonicalize().unwrap();
        let dir = StdioCommands::parse_with(Some(&format!(" {} , ", root.join("bin").display())), None).unwrap();
        assert!(dir.admit(root.join("bin/tool").to_str().unwrap(), &env(&[]), None).is_ok());
        assert!(dir.admit(root.join("bin/data").to_str().unwrap(), &env(&[]), None).is_ok());
        // `bin2` shares a prefix of characters, not of path components; `..` leaves the directory.
        assert!(dir.admit(root.join("bin2/tool").to_str().unwrap(), &env(&[]), None).is_err());
        assert!(dir.admit(root.join("bin/../other/tool").to_str().unwrap(), &env(&[]), None).is_err());
        // The directory itself is no executable.
        assert!(dir.admit(root.join("bin").to_str().unwrap(), &env(&[]), None).is_err());
        let above = StdioCommands::parse_with(Some(root.to_str().unwrap()), None).unwrap();
        assert!(above.admit(root.join("other/tool").to_str().unwrap(), &env(&[]), None).is_ok());
    }

    #[test]
    fn loader_variables_are_refused_when_restricted() {
        let d = layout();
        let root = d.path().canonicalize().unwrap();
        let dir = StdioCommands::parse_with(Some(root.to_str().unwrap()), None).unwrap();
        let tool = root.join("bin/tool");
        for name in ["LD_PRELOAD", "LD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES"] {
            let refused = dir.admit(tool.to_str().unwrap(), &env(&[(name, "/x.so")]), None).unwrap_err();
            assert_eq!(refused, CommandRefused::LoaderVariable { name: name.into() });
            assert!(refused.to_string().contains("MCPGW_STDIO_COMMANDS"), "{refused}");
        }
        assert!(dir.admit(tool.to_str().unwrap(), &env(&[("API_TOKEN", "t")]), None).is_ok());
    }

    #[test]
    fn entries_are_checked_when_the_setting_is_read() {
        let d = layout();
        let root = d.path().canonicalize().unwrap();
        let path = root.join("bin").into_os_string();
        let by_name = StdioCommands::parse_with(Some("tool"), Some(&path)).unwrap();
        assert_eq!(by_name.allowed, Some(vec![Allowed::File(root.join("bin/tool"))]));
        // Not executable, not on PATH, relative, missing: each is an error naming the setting.
        for bad in ["data", "nothing-here", "bin/tool", "/no/such/dir"] {
            let e = StdioCommands::parse_with(Some(bad), Some(&path)).unwrap_err().to_string();
            assert!(e.starts_with("MCPGW_STDIO_COMMANDS: ") && e.contains(bad), "{e}");
        }
    }
}

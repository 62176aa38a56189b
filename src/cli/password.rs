//! Where the repository password comes from, in restic's order of precedence: a password
//! command, a password file, the `RESTIC_PASSWORD` variable, and last standard input when it is
//! not a terminal. The password is never logged or put in an error message.

use std::io::{IsTerminal, Read};
use std::process::Command;

use anyhow::{Context, bail};

/// Password sources named on the command line or in the environment.
#[derive(Clone, Debug, Default)]
pub struct PasswordSource {
    /// `--password-file` / `RESTIC_PASSWORD_FILE`.
    pub file: Option<std::path::PathBuf>,
    /// `--password-command` / `RESTIC_PASSWORD_COMMAND`.
    pub command: Option<String>,
}

/// Strips one trailing line ending, as restic does for files and commands.
fn trim_line_end(mut s: Vec<u8>) -> Vec<u8> {
    while matches!(s.last(), Some(b'\n' | b'\r')) {
        s.pop();
    }
    s
}

impl PasswordSource {
    /// Reads the password.
    pub fn read(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(cmd) = &self.command {
            let out = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("run the password command")?;
            if !out.status.success() {
                bail!("the password command exited with {}", out.status);
            }
            return Ok(trim_line_end(out.stdout));
        }
        if let Some(path) = &self.file {
            let bytes = std::fs::read(path)
                .with_context(|| format!("read password file {}", path.display()))?;
            return Ok(trim_line_end(bytes));
        }
        if let Some(pw) = std::env::var_os("RESTIC_PASSWORD") {
            use std::os::unix::ffi::OsStrExt;
            return Ok(pw.as_bytes().to_vec());
        }
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            let mut buf = Vec::new();
            stdin
                .lock()
                .read_to_end(&mut buf)
                .context("read the password from standard input")?;
            let first_line = buf
                .split(|&b| b == b'\n')
                .next()
                .unwrap_or_default()
                .to_vec();
            return Ok(trim_line_end(first_line));
        }
        bail!(
            "no password given: use --password-file, --password-command, RESTIC_PASSWORD or RESTIC_PASSWORD_FILE"
        )
    }
}

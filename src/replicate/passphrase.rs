//! Where a passphrase comes from: `--passphrase-file`, `CLAWFS_PASSPHRASE`, or a terminal.

use std::io::IsTerminal;
use std::path::Path;

use crate::replicate::{ReplicaError, Result};

/// The passphrase given without asking (a file, then the environment), if any.
pub fn given(file: Option<&Path>) -> Result<Option<String>> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).map_err(|e| {
            ReplicaError::Io(format!("reading passphrase file {}: {e}", f.display()))
        })?;
        let s = s.strip_suffix('\n').unwrap_or(&s).to_string();
        if s.is_empty() {
            return Err(ReplicaError::Usage(format!(
                "passphrase file {} is empty",
                f.display()
            )));
        }
        return Ok(Some(s));
    }
    Ok(std::env::var("CLAWFS_PASSPHRASE")
        .ok()
        .filter(|s| !s.is_empty()))
}

/// The passphrase: given, or asked for on the terminal; `what` says what it is for.
pub fn obtain(file: Option<&Path>, what: &str) -> Result<String> {
    if let Some(p) = given(file)? {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(ReplicaError::NeedPassphrase(what.to_string()));
    }
    rpassword::prompt_password(format!("Passphrase for {what}: "))
        .map_err(|e| ReplicaError::Io(format!("reading the passphrase: {e}")))
}

/// A new passphrase: `CLAWFS_NEW_PASSPHRASE`, or asked twice on the terminal.
pub fn obtain_new(what: &str) -> Result<String> {
    if let Ok(p) = std::env::var("CLAWFS_NEW_PASSPHRASE") {
        if !p.is_empty() {
            return Ok(p);
        }
    }
    if !std::io::stdin().is_terminal() {
        return Err(ReplicaError::Usage(format!(
            "a new passphrase for {what} is needed: set CLAWFS_NEW_PASSPHRASE or run on a terminal"
        )));
    }
    let a = rpassword::prompt_password(format!("New passphrase for {what}: "))
        .map_err(|e| ReplicaError::Io(e.to_string()))?;
    let b =
        rpassword::prompt_password("Repeat it: ").map_err(|e| ReplicaError::Io(e.to_string()))?;
    if a != b {
        return Err(ReplicaError::Usage(
            "the passphrases differ; nothing changed".into(),
        ));
    }
    if a.is_empty() {
        return Err(ReplicaError::Usage(
            "an empty passphrase is not allowed".into(),
        ));
    }
    Ok(a)
}

//! A ledger of the secrets a test created and of every API answer it saw, to prove that no
//! secret leaks into a log line or an answer.
//!
//! Record each secret with [`SecretLedger::secret`] as it is created, each answer with
//! [`SecretLedger::answer`] (answers that hand a secret out by design — bootstrap, token
//! creation, a management read — are simply not recorded), then call [`SecretLedger::check`]
//! with every process's output: it lists every place a secret was found.
//!
//! Suite-wide: every secret recorded here, the run's management token and every token the
//! harness creates ([`register`]) is also checked against the whole output of every
//! [`crate::process::Process`] when it is dropped, in every test of the suite
//! ([`leaked_into`]): a process that logged one fails the test that ran it.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

/// Secrets created anywhere in this test run.
fn registry() -> &'static Mutex<BTreeSet<String>> {
    static SECRETS: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    SECRETS.get_or_init(Mutex::default)
}

/// Records a secret created in this test run (the suite-wide check looks for it in every
/// process's output). Short strings are ignored: they would match by chance.
pub fn register(secret: &str) {
    if secret.len() >= 16 {
        registry()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(secret.to_owned());
    }
}

/// The places in `lines` (a process's output) where a secret of this run appears: "line N"
/// for each, never the secret itself.
pub fn leaked_into(lines: &[String]) -> Vec<String> {
    let secrets = registry()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| secrets.iter().any(|s| line.contains(s.as_str())))
        .map(|(i, _)| format!("line {}", i + 1))
        .collect()
}

/// Secrets and answers seen by a test.
#[derive(Debug, Default)]
pub struct SecretLedger {
    secrets: Mutex<Vec<String>>,
    answers: Mutex<Vec<(String, String)>>,
}

impl SecretLedger {
    /// A new, empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers a secret the test created (or a server created for it).
    pub fn secret(&self, secret: &str) {
        register(secret);
        if let Ok(mut secrets) = self.secrets.lock()
            && !secret.is_empty()
        {
            secrets.push(secret.to_owned());
        }
    }

    /// Records an answer that must not contain any secret (`what`: the request, for the report).
    pub fn answer(&self, what: impl Into<String>, body: &str) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.push((what.into(), body.to_owned()));
        }
    }

    /// How many secrets and answers were recorded.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.secrets.lock().map(|s| s.len()).unwrap_or(0),
            self.answers.lock().map(|a| a.len()).unwrap_or(0),
        )
    }

    /// Every place a recorded secret appears: in a recorded answer or in one of `outputs`
    /// (`(name, text)`, e.g. each process's whole log). Empty when nothing leaked.
    pub fn leaks(&self, outputs: &[(&str, String)]) -> Vec<String> {
        let secrets = self.secrets.lock().map(|s| s.clone()).unwrap_or_default();
        let answers = self.answers.lock().map(|a| a.clone()).unwrap_or_default();
        let mut found = Vec::new();
        for secret in &secrets {
            for (what, body) in &answers {
                if body.contains(secret.as_str()) {
                    found.push(format!("answer to {what} contains a secret"));
                }
            }
            for (name, text) in outputs {
                for line in text.lines().filter(|l| l.contains(secret.as_str())) {
                    found.push(format!("{name} logged a secret: {line}"));
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_found_by_line_without_being_repeated() {
        register("a-registered-secret-0123456789");
        register("short");
        let lines = vec![
            "nothing here".to_owned(),
            "token=a-registered-secret-0123456789".to_owned(),
            "short".to_owned(),
        ];
        let found = leaked_into(&lines);
        assert_eq!(found, ["line 2"]);
    }

    #[test]
    fn finds_secrets_in_answers_and_logs() {
        let ledger = SecretLedger::new();
        ledger.secret("s3cr3t");
        ledger.answer("GET /a", "{\"ok\":true}");
        assert!(
            ledger
                .leaks(&[("p", "line one\nline two".to_owned())])
                .is_empty()
        );
        ledger.answer("GET /b", "{\"SecretID\":\"s3cr3t\"}");
        let leaks = ledger.leaks(&[("p", "x\nhere s3cr3t is\n".to_owned())]);
        assert_eq!(leaks.len(), 2, "{leaks:?}");
        assert!(leaks[1].contains("here s3cr3t is"));
    }
}

//! `plexus kv get|put|delete|list|watch|export|import`: the KV store from the command line.
//!
//! Values are printed raw; `--json` prints Consul's JSON shape. `put KEY @FILE` reads the value from
//! a file, `put KEY -` from stdin. `export` writes `[{"key","flags","value"(base64)}]` (the shape
//! `consul kv export` writes) and `import` reads it back.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use plexus_api::KvExportEntry;
use plexus_api::client::QueryOptions;
use plexus_api::kv::check_key;

use super::ControlArgs;
use crate::output;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `plexus kv ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a key's value (exit 1 when absent).
    Get {
        /// The key.
        key: String,
        /// Print the JSON entry (flags, indexes, base64 value).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Write a key: VALUE as given, `@FILE` from a file, `-` from stdin.
    Put {
        /// The key.
        key: String,
        /// The value, `@FILE` or `-` (default: empty).
        value: Option<String>,
        /// Opaque flags stored with the value.
        #[arg(long, default_value_t = 0)]
        flags: u64,
        /// Write only when the key's modify index is this (0: only when absent).
        #[arg(long)]
        cas: Option<u64>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Delete a key, or everything under a prefix with `--recurse`.
    Delete {
        /// The key or prefix.
        key: String,
        /// Delete every key starting with KEY.
        #[arg(long)]
        recurse: bool,
        /// Delete only when the key's modify index is this.
        #[arg(long)]
        cas: Option<u64>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List key names under a prefix.
    List {
        /// The prefix (default: everything).
        #[arg(default_value = "")]
        prefix: String,
        /// Collapse names below the first SEPARATOR after the prefix.
        #[arg(long)]
        separator: Option<String>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Print a key's value now and after every change (blocking queries) until interrupted.
    Watch {
        /// The key.
        key: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Write every key under a prefix as JSON to stdout (backup).
    Export {
        /// The prefix (default: everything).
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Write the keys of an export (a file or `-` for stdin) back.
    Import {
        /// The export file, or `-`.
        file: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Get { key, json, control } => {
            check_key(&key, false).with_context(|| format!("key {key:?}"))?;
            let found = control
                .client()?
                .kv_get(&key, QueryOptions::default())
                .await?;
            let Some(pair) = found.value else {
                eprintln!("error: key {key:?} not found");
                return Ok(ExitCode::FAILURE);
            };
            if json {
                output::json(&pair)?;
            } else {
                let value = decode_value(pair.value.as_deref())?;
                std::io::stdout().write_all(&value)?;
                println!();
            }
        }
        Command::Put {
            key,
            value,
            flags,
            cas,
            control,
        } => {
            check_key(&key, false).with_context(|| format!("key {key:?}"))?;
            let bytes = read_value(value.as_deref())?;
            if !control.client()?.kv_put(&key, bytes, flags, cas).await? {
                eprintln!("error: key {key:?} not written: its modify index is not {cas:?}");
                return Ok(ExitCode::FAILURE);
            }
            println!("Success! Data written to: {key}");
        }
        Command::Delete {
            key,
            recurse,
            cas,
            control,
        } => {
            check_key(&key, recurse).with_context(|| format!("key {key:?}"))?;
            if !control.client()?.kv_delete(&key, recurse, cas).await? {
                eprintln!("error: key {key:?} not deleted: its modify index is not {cas:?}");
                return Ok(ExitCode::FAILURE);
            }
            println!("Success! Deleted key: {key}");
        }
        Command::List {
            prefix,
            separator,
            control,
        } => {
            for key in control
                .client()?
                .kv_keys(&prefix, separator.as_deref())
                .await?
            {
                println!("{key}");
            }
        }
        Command::Watch { key, control } => watch(&key, &control).await?,
        Command::Export { prefix, control } => {
            let pairs = control
                .client()?
                .kv_list(&prefix, QueryOptions::default())
                .await?
                .value;
            let mut entries = Vec::with_capacity(pairs.len());
            for pair in pairs {
                let value = decode_value(pair.value.as_deref())?;
                entries.push(KvExportEntry {
                    key: pair.key,
                    flags: pair.flags,
                    value: B64.encode(value),
                });
            }
            output::json(&entries)?;
        }
        Command::Import { file, control } => {
            let text = if file == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let entries: Vec<KvExportEntry> = serde_json::from_str(&text)
                .with_context(|| format!("{file} is not a KV export (a JSON array)"))?;
            for (i, entry) in entries.iter().enumerate() {
                check_key(&entry.key, false)
                    .with_context(|| format!("{file}: entry {i}: key {:?}", entry.key))?;
                B64.decode(&entry.value)
                    .with_context(|| format!("{file}: entry {i}: value is not base64"))?;
            }
            let client = control.client()?;
            for entry in &entries {
                let value = B64.decode(&entry.value)?;
                client
                    .kv_put(&entry.key, value, entry.flags, None)
                    .await
                    .with_context(|| format!("writing {:?}", entry.key))?;
            }
            println!("Imported {} key(s)", entries.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn decode_value(value: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match value {
        None => Ok(Vec::new()),
        Some(text) => B64
            .decode(text)
            .context("the server sent a value that is not base64"),
    }
}

fn read_value(value: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match value {
        None => Ok(Vec::new()),
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes)?;
            Ok(bytes)
        }
        Some(text) => match text.strip_prefix('@') {
            Some(path) => {
                let path = PathBuf::from(path);
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
            }
            None => Ok(text.as_bytes().to_vec()),
        },
    }
}

/// Prints the value at start and after each change; a deleted key prints nothing until it is back.
async fn watch(key: &str, control: &ControlArgs) -> anyhow::Result<()> {
    check_key(key, false).with_context(|| format!("key {key:?}"))?;
    let client = control.client()?;
    let mut index = 0;
    let mut last: Option<u64> = None;
    let mut backoff = plexus_runtime::Backoff::default();
    loop {
        let query = QueryOptions::blocking(index, Duration::from_secs(300));
        match client.kv_get(key, query).await {
            Ok(found) => {
                backoff.reset();
                // An index that went backwards (store restored): start over.
                index = if found.index < index { 0 } else { found.index };
                let modify = found.value.as_ref().map(|p| p.modify_index);
                if modify != last {
                    last = modify;
                    if let Some(pair) = found.value {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&decode_value(pair.value.as_deref())?)?;
                        out.write_all(b"\n")?;
                        out.flush()?;
                    }
                }
            }
            Err(error) if error.is_unreachable() => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "control plane unreachable; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

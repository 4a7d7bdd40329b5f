//! HCL/JSON definition files: `service { ... }` / `services { ... }` blocks → [`ServiceRegistration`]s.
//!
//! A file holds one `service` (written once) and/or any number of `services`, in HCL (`.hcl`) or
//! JSON (`.json`: `{"service": {...}}`, `{"services": [...]}`); the format follows the extension.
//! Keys are those of [`crate::registration`] (snake_case, PascalCase accepted); unknown keys are
//! rejected at every level, including the top.
//!
//! - [`parse_str`] / [`load_file`] / [`load_dir`]: syntax and shape only;
//! - [`check_files`]: also runs [`validate::validate_service`] on every registration and checks that
//!   service ids are unique across the files; this is `plexus validate FILE...`.
//!
//! Every problem is a [`DefinitionError`] naming the file, the line when known and the field path
//! (`services[1].port`); all problems are reported, not just the first. Line numbers come from the
//! parser for syntax errors and JSON shape errors, and from a best-effort scan of the text for the
//! rest (`locate`).
//!
//! HCL is parsed with hcl-rs and converted to JSON by `hcl_body`, which is stricter than hcl-rs's
//! own deserialiser: attribute values must be literals, only `services`, `checks` and
//! `upstreams` blocks may repeat, blocks take no labels. Consul's one-line blocks
//! (`check { tcp = "x"  interval = "1s" }`), which HCL 2 does not allow, are laid out first
//! (`layout`).

pub(crate) mod hcl_body;
pub(crate) mod layout;
pub(crate) mod locate;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use self::locate::Seg;
use crate::one_or_many::OneOrMany;
use crate::registration::ServiceRegistration;
use crate::validate::{self, ValidatedService};

/// A problem with a definition file.
///
/// Displays as `<file>:<line>: <field>: <message>`, leaving out the parts not known, e.g.
/// `echo.hcl:7: services[1].port: port 70000 is outside 1–65535`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct DefinitionError {
    /// The file, as given.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Field path within the file (`services[1].port`), when the problem is in one field.
    pub field: Option<String>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl DefinitionError {
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: None,
            field: None,
            message: message.into(),
        }
    }

    fn render(&self) -> String {
        let mut out = self.file.display().to_string();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
        }
        if let Some(field) = &self.field {
            out.push_str(&format!(": {field}"));
        }
        out.push_str(&format!(": {}", self.message));
        out
    }
}

/// The top level of a definition file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// One service (a list is rejected after decoding, with a hint).
    #[serde(default)]
    service: OneOrMany<ServiceRegistration>,
    /// Any number of services.
    #[serde(default)]
    services: OneOrMany<ServiceRegistration>,
}

/// A registration and where it sits in its file (`service`, `services[1]`).
struct Entry {
    position: String,
    registration: ServiceRegistration,
}

/// A file read and parsed; the text is kept to place later errors.
pub(crate) struct Loaded {
    path: PathBuf,
    text: String,
    entries: Vec<Entry>,
}

impl Loaded {
    fn error(&self, field: String, message: impl Into<String>) -> DefinitionError {
        DefinitionError {
            file: self.path.clone(),
            line: locate::line_of(&self.text, &locate::parse_path(&field)),
            field: Some(field),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Hcl,
    Json,
}

fn format_of(file: &Path) -> Result<Format, DefinitionError> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("hcl") => Ok(Format::Hcl),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(DefinitionError::new(
            file,
            format!("unsupported file extension \".{other}\" (expected .hcl or .json)"),
        )),
        None => Err(DefinitionError::new(
            file,
            "definition files must end in .hcl or .json",
        )),
    }
}

/// Parses one definition file's text; the format follows `file`'s extension. Syntax and shape only:
/// see [`check_files`] for validation.
pub fn parse_str(
    file: &Path,
    text: &str,
) -> Result<Vec<ServiceRegistration>, Vec<DefinitionError>> {
    parse_entries(file, text).map(|entries| entries.into_iter().map(|e| e.registration).collect())
}

/// Reads and parses one definition file.
pub fn load_file(path: &Path) -> Result<Vec<ServiceRegistration>, Vec<DefinitionError>> {
    load(path).map(|loaded| loaded.entries.into_iter().map(|e| e.registration).collect())
}

/// Reads and parses every `*.hcl` and `*.json` file directly in `dir`, in file-name order (other
/// files are ignored). Errors are collected across all files; a service id defined twice is one.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, ServiceRegistration)>, Vec<DefinitionError>> {
    let paths = definition_files(dir).map_err(|e| vec![e])?;
    let (loaded, mut errors) = load_all(&paths);
    let mut ids = Ids::default();
    for file in &loaded {
        for entry in &file.entries {
            let reg = &entry.registration;
            let (id, key) = match reg.id.as_deref() {
                Some(id) if !id.is_empty() => (id, "id"),
                _ => (reg.name.as_str(), "name"),
            };
            if !id.is_empty() {
                ids.insert(file, id, format!("{}.{key}", entry.position), &mut errors);
            }
        }
    }
    finish(loaded, errors)
}

/// Parses and validates definition files, as `plexus validate FILE...` does.
///
/// Each registration goes through [`validate::validate_service`]; sidecar ports are assigned from
/// 21000 upwards, skipping every port written in these files and those already assigned in this
/// call. Service ids (sidecars included) must be unique across all files. Every problem in every
/// file is returned at once; validation errors name the field within the file
/// (`services[1].port`) and, best-effort, its line.
pub fn check_files(
    paths: &[PathBuf],
    defaults: &validate::Defaults,
) -> Result<Vec<(PathBuf, ServiceRegistration)>, Vec<DefinitionError>> {
    let (loaded, errors) = load_all(paths);
    check_loaded(loaded, errors, defaults)
}

/// [`check_files`] over files already parsed (the agent configuration loader splits a file's
/// service blocks from its agent keys), adding to `errors`.
pub(crate) fn check_loaded(
    loaded: Vec<Loaded>,
    mut errors: Vec<DefinitionError>,
    defaults: &validate::Defaults,
) -> Result<Vec<(PathBuf, ServiceRegistration)>, Vec<DefinitionError>> {
    let written: BTreeSet<u16> = loaded
        .iter()
        .flat_map(|f| &f.entries)
        .flat_map(|e| {
            let reg = &e.registration;
            let sidecar = reg
                .connect
                .as_ref()
                .and_then(|c| c.sidecar_service.as_ref());
            [reg.port, sidecar.and_then(|s| s.port)]
        })
        .filter_map(|p| p.and_then(|p| u16::try_from(p).ok()))
        .collect();
    let mut free = crate::SIDECAR_PORT_RANGE;
    let mut next_port = || free.find(|p| !written.contains(p));

    let mut ids = Ids::default();
    for file in &loaded {
        for entry in &file.entries {
            match validate::validate_service(&entry.registration, defaults, &mut next_port) {
                Ok(services) => {
                    for (i, ValidatedService { service, .. }) in services.iter().enumerate() {
                        let field = id_field(entry, i);
                        ids.insert(file, &service.id, field, &mut errors);
                    }
                }
                Err(e) => {
                    errors.extend(e.0.into_iter().map(|fe| {
                        file.error(format!("{}.{}", entry.position, fe.field), fe.message)
                    }))
                }
            }
        }
    }
    finish(loaded, errors)
}

/// The field that sets the id of the `i`-th service expanded from `entry` (0: itself, 1: sidecar).
fn id_field(entry: &Entry, i: usize) -> String {
    let reg = &entry.registration;
    let given = |id: Option<&String>| id.is_some_and(|id| !id.is_empty());
    let field = if i == 0 {
        if given(reg.id.as_ref()) { "id" } else { "name" }
    } else {
        let sidecar = reg
            .connect
            .as_ref()
            .and_then(|c| c.sidecar_service.as_ref());
        if given(sidecar.and_then(|s| s.id.as_ref())) {
            "connect.sidecar_service.id"
        } else {
            "connect.sidecar_service"
        }
    };
    format!("{}.{field}", entry.position)
}

/// Service ids seen so far, and where.
#[derive(Default)]
struct Ids(BTreeMap<String, String>);

impl Ids {
    fn insert(
        &mut self,
        file: &Loaded,
        id: &str,
        field: String,
        errors: &mut Vec<DefinitionError>,
    ) {
        let here = file.error(field, String::new());
        let place = format!(
            "{}{}",
            here.file.display(),
            here.line.map(|l| format!(":{l}")).unwrap_or_default()
        );
        let place = match &here.field {
            Some(field) => format!("{place} ({field})"),
            None => place,
        };
        match self.0.get(id) {
            Some(first) => errors.push(DefinitionError {
                message: format!("duplicate service id {id:?}: already defined at {first}"),
                ..here
            }),
            None => {
                self.0.insert(id.to_owned(), place);
            }
        }
    }
}

fn finish(
    loaded: Vec<Loaded>,
    errors: Vec<DefinitionError>,
) -> Result<Vec<(PathBuf, ServiceRegistration)>, Vec<DefinitionError>> {
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(loaded
        .into_iter()
        .flat_map(|f| {
            let path = f.path;
            f.entries
                .into_iter()
                .map(move |e| (path.clone(), e.registration))
        })
        .collect())
}

fn load_all(paths: &[PathBuf]) -> (Vec<Loaded>, Vec<DefinitionError>) {
    let mut loaded = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for path in paths {
        match load(path) {
            Ok(file) => loaded.push(file),
            Err(e) => errors.extend(e),
        }
    }
    (loaded, errors)
}

fn load(path: &Path) -> Result<Loaded, Vec<DefinitionError>> {
    format_of(path).map_err(|e| vec![e])?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![DefinitionError::new(path, format!("cannot read file: {e}"))])?;
    let entries = parse_entries(path, &text)?;
    Ok(Loaded {
        path: path.to_owned(),
        text,
        entries,
    })
}

/// The `*.hcl` and `*.json` files directly in `dir`, sorted.
fn definition_files(dir: &Path) -> Result<Vec<PathBuf>, DefinitionError> {
    let read_err =
        |e: std::io::Error| DefinitionError::new(dir, format!("cannot read directory: {e}"));
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        // Follows symlinks; a dangling one is skipped like any non-file.
        if path.is_file() && format_of(&path).is_ok() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn parse_entries(file: &Path, text: &str) -> Result<Vec<Entry>, Vec<DefinitionError>> {
    let raw = match format_of(file).map_err(|e| vec![e])? {
        Format::Hcl => parse_hcl(file, text)?,
        Format::Json => parse_json(file, text).map_err(|e| vec![e])?,
    };
    entries_of(file, text, raw)
}

fn entries_of(file: &Path, text: &str, raw: RawFile) -> Result<Vec<Entry>, Vec<DefinitionError>> {
    if raw.service.len() > 1 {
        let field = vec![Seg::Key("service".to_owned()), Seg::Index(1)];
        return Err(vec![DefinitionError {
            file: file.to_owned(),
            line: locate::line_of(text, &field),
            field: Some("service".to_owned()),
            message: "`service` may be written once; use `services` for several".to_owned(),
        }]);
    }
    let single = raw.service.into_iter().map(|registration| Entry {
        position: "service".to_owned(),
        registration,
    });
    let many = raw
        .services
        .into_iter()
        .enumerate()
        .map(|(i, registration)| Entry {
            position: format!("services[{i}]"),
            registration,
        });
    Ok(single.chain(many).collect())
}

/// A file's text as the JSON value it stands for (HCL converted strictly), for loaders that
/// look at its keys before decoding.
pub(crate) fn parse_value(
    file: &Path,
    text: &str,
) -> Result<serde_json::Value, Vec<DefinitionError>> {
    match format_of(file).map_err(|e| vec![e])? {
        Format::Hcl => hcl_value(file, text),
        Format::Json => {
            serde_json::from_str(text).map_err(|e| vec![json_error(file, text, &e, &[])])
        }
    }
}

/// Decodes the `service`/`services` part of a file's value (see [`parse_value`]).
pub(crate) fn loaded_from_value(
    file: &Path,
    text: &str,
    value: serde_json::Value,
) -> Result<Loaded, Vec<DefinitionError>> {
    let raw = decode_value(file, text, value)?;
    let entries = entries_of(file, text, raw)?;
    Ok(Loaded {
        path: file.to_owned(),
        text: text.to_owned(),
        entries,
    })
}

fn parse_hcl(file: &Path, text: &str) -> Result<RawFile, Vec<DefinitionError>> {
    let value = hcl_value(file, text)?;
    decode_value(file, text, value)
}

fn hcl_value(file: &Path, text: &str) -> Result<serde_json::Value, Vec<DefinitionError>> {
    hcl_value_shaped(file, text, &hcl_body::DEFINITIONS)
}

/// An HCL file's text as the JSON value it stands for, converted strictly with `shape`'s
/// repeated and labelled blocks (job files use this too).
pub(crate) fn hcl_value_shaped(
    file: &Path,
    text: &str,
    shape: &hcl_body::Shape,
) -> Result<serde_json::Value, Vec<DefinitionError>> {
    let (laid_out, written_line) = layout::relayout(text);
    let body = hcl::parse(&laid_out).map_err(|e| {
        let err = match e {
            hcl::Error::Parse(p) => DefinitionError {
                line: written_line
                    .get(p.location().line().saturating_sub(1))
                    .copied()
                    .or(Some(p.location().line())),
                ..DefinitionError::new(
                    file,
                    format!(
                        "invalid HCL at column {}: {}",
                        p.location().column(),
                        p.message()
                    ),
                )
            },
            other => DefinitionError::new(file, format!("invalid HCL: {other}")),
        };
        vec![err]
    })?;
    hcl_body::to_json(&body, shape).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| DefinitionError {
                file: file.to_owned(),
                line: locate::line_of(text, &e.at),
                field: Some(locate::render_path(&e.field)),
                message: e.message,
            })
            .collect::<Vec<_>>()
    })
}

fn decode_value(
    file: &Path,
    text: &str,
    value: serde_json::Value,
) -> Result<RawFile, Vec<DefinitionError>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = field_path(e.path());
        vec![DefinitionError {
            file: file.to_owned(),
            line: locate::line_of(text, &path),
            field: (!path.is_empty()).then(|| locate::render_path(&path)),
            message: tidy(&e.inner().to_string()),
        }]
    })
}

fn parse_json(file: &Path, text: &str) -> Result<RawFile, DefinitionError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let raw: RawFile = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| json_error(file, text, e.inner(), &field_path(e.path())))?;
    de.end().map_err(|e| json_error(file, text, &e, &[]))?;
    Ok(raw)
}

pub(crate) fn json_error(
    file: &Path,
    text: &str,
    err: &serde_json::Error,
    path: &[Seg],
) -> DefinitionError {
    let position = format!(" at line {} column {}", err.line(), err.column());
    let full = err.to_string();
    let message = full.strip_suffix(&position).unwrap_or(&full);
    let data = err.classify() == serde_json::error::Category::Data;
    DefinitionError {
        file: file.to_owned(),
        line: (err.line() > 0)
            .then_some(err.line())
            .or_else(|| locate::line_of(text, path)),
        field: (data && !path.is_empty()).then(|| locate::render_path(path)),
        message: if data {
            tidy(message)
        } else {
            format!("invalid JSON at column {}: {message}", err.column())
        },
    }
}

/// The decoder's path as segments, with `[0]` after a list written as a lone item.
pub(crate) fn field_path(path: &serde_path_to_error::Path) -> Vec<Seg> {
    let segs: Vec<Seg> = path
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect();
    let mut out = Vec::with_capacity(segs.len() + 1);
    let mut iter = segs.into_iter().peekable();
    while let Some(seg) = iter.next() {
        let list = matches!(&seg, Seg::Key(k) if hcl_body::is_list(k));
        out.push(seg);
        if list && matches!(iter.peek(), Some(Seg::Key(_))) {
            out.push(Seg::Index(0));
        }
    }
    out
}

/// Shortens serde's "unknown field" message: the file spellings only, and a suggestion.
pub(crate) fn tidy(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let mut names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    // Both spellings are accepted; list the snake_case ones files use.
    if names
        .iter()
        .any(|n| n.chars().all(|c| !c.is_ascii_uppercase()))
    {
        names.retain(|n| n.chars().all(|c| !c.is_ascii_uppercase()));
    }
    let lower = unknown.to_ascii_lowercase();
    let closest = names
        .iter()
        .map(|n| (edit_distance(&lower, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min();
    match closest {
        Some((_, name)) => format!("unknown field `{unknown}` (did you mean `{name}`?)"),
        None if names.is_empty() => format!("unknown field `{unknown}`"),
        None => format!(
            "unknown field `{unknown}` (expected one of {})",
            names.join(", ")
        ),
    }
}

pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

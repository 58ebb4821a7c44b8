//! The configuration file (`--config llm-router.toml`): nodes and settings in TOML.
//!
//! Every setting is a top-level key named like its flag with `_` for `-`
//! (`queue_size = 100` is `--queue-size 100`); its value is checked by the flag's own
//! parser. Each node is a `[[nodes]]` table: `url` (alias `base_url`), `name`,
//! `api_key`, `kind`, `max_concurrent`, `weight`, `tls_insecure`. Any mistake (TOML
//! syntax, an unknown key, a bad value, a bad node) is a [`FileError`] naming the file,
//! the line and the reason; the router does not start with it. This module only reads
//! and checks: `config` merges the settings under the flags, `app` declares the nodes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde::Deserialize;
use toml::Spanned;

use super::Cli;
use crate::nodes::{normalize_base_url, NodeKind, NodeRegistration, MAX_WEIGHT};

/// A mistake in the configuration file.
#[derive(Debug, thiserror::Error)]
#[error("configuration file {}{}: {reason}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct FileError {
    pub path: PathBuf,
    /// 1-based; `None` when the file could not be read at all.
    pub line: Option<usize>,
    pub reason: String,
}

/// One setting of the file, as the flags it stands for.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The id of the flag's argument (`queue_size`).
    pub id: String,
    /// `--queue-size`
    long: String,
    values: Vec<String>,
}

impl Setting {
    /// `--flag=value`, once per value.
    pub fn flags(&self) -> impl Iterator<Item = String> + '_ {
        self.values.iter().map(|v| format!("--{}={v}", self.long))
    }
}

/// A `[[nodes]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDecl {
    #[serde(alias = "base_url")]
    pub url: String,
    pub name: Option<String>,
    pub api_key: Option<String>,
    pub kind: Option<String>,
    pub max_concurrent: Option<u64>,
    pub weight: Option<u64>,
    #[serde(default)]
    pub tls_insecure: bool,
}

/// The file, checked.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub settings: Vec<Setting>,
    pub nodes: Vec<NodeRegistration>,
}

#[derive(Deserialize)]
struct Nodes {
    #[serde(default)]
    nodes: Vec<Spanned<NodeDecl>>,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<ConfigFile, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            path: path.to_path_buf(),
            line: None,
            reason: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, FileError> {
        let at = |offset: usize, reason: String| FileError {
            path: path.to_path_buf(),
            line: Some(line_of(text, offset)),
            reason,
        };
        let toml_error = |e: toml::de::Error| FileError {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            reason: e.message().trim().to_string(),
        };
        let top: BTreeMap<String, Spanned<toml::Value>> = toml::from_str(text).map_err(toml_error)?;
        let mut settings = Vec::new();
        for (key, value) in &top {
            if key == "nodes" {
                continue;
            }
            settings.push(setting(key, value).map_err(|reason| at(value.span().start, reason))?);
        }
        let declared: Nodes = toml::from_str(text).map_err(toml_error)?;
        let mut nodes: Vec<NodeRegistration> = Vec::new();
        for decl in declared.nodes {
            let start = decl.span().start;
            let node = registration(decl.into_inner()).map_err(|reason| at(start, reason))?;
            let url = normalize_base_url(&node.base_url).map_err(|e| at(start, e.to_string()))?;
            if nodes
                .iter()
                .any(|n| normalize_base_url(&n.base_url).ok().as_deref() == Some(&url))
            {
                return Err(at(start, format!("node {url} is declared twice")));
            }
            nodes.push(node);
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            settings,
            nodes,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The flag a key names, with its value checked by that flag's parser.
fn setting(key: &str, value: &Spanned<toml::Value>) -> Result<Setting, String> {
    let long = key.replace('_', "-");
    let command = Cli::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()) && !matches!(a.get_id().as_str(), "help" | "version"))
        .filter(|_| key != "config")
        .ok_or_else(|| format!("unknown setting '{key}'"))?;
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "'{key}' must be a string, a number or a boolean, not {}",
            other.type_str()
        )),
    };
    let values = match value.get_ref() {
        toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
        v => vec![scalar(v)?],
    };
    let setting = Setting {
        id: arg.get_id().to_string(),
        long,
        values,
    };
    // The flag's own parser and range checks.
    let argv = std::iter::once("llm-router".to_string()).chain(setting.flags());
    Cli::command().try_get_matches_from(argv).map_err(|e| {
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default();
        format!("'{key}': {}", first.trim_start_matches("error: "))
    })?;
    Ok(setting)
}

fn registration(d: NodeDecl) -> Result<NodeRegistration, String> {
    let kind = d
        .kind
        .as_deref()
        .map(|k| k.parse::<NodeKind>().map_err(|e| e.to_string()))
        .transpose()?;
    if d.max_concurrent == Some(0) {
        return Err("max_concurrent must be at least 1".into());
    }
    if d.weight.is_some_and(|w| !(1..=MAX_WEIGHT).contains(&w)) {
        return Err(format!("weight must be from 1 to {MAX_WEIGHT}"));
    }
    Ok(NodeRegistration {
        base_url: d.url,
        name: d.name,
        api_key: d.api_key,
        kind,
        tls_insecure: d.tls_insecure,
        max_concurrent: d.max_concurrent,
        weight: d.weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse(Path::new("r.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_become_flags_and_nodes_registrations() {
        let f = parse(
            "port = 8080\nmetrics = \"admin\"\nretry_refused = false\nca_file = [\"a.pem\", \"b.pem\"]\n\
             max_connections = 512\nclock_offset_secs = -3600\n\n\
             [[nodes]]\nurl = \"http://gpu-1:8080\"\nmax_concurrent = 4\nweight = 2\nkind = \"llamacpp\"\n\n\
             [[nodes]]\nbase_url = \"https://gpu-2:11434/v1\"\nname = \"gpu-2\"\ntls_insecure = true\n",
        )
        .unwrap();
        let flags: Vec<String> = f.settings.iter().flat_map(|s| s.flags().collect::<Vec<_>>()).collect();
        assert_eq!(
            flags,
            [
                "--ca-file=a.pem",
                "--ca-file=b.pem",
                "--clock-offset-secs=-3600",
                "--max-connections=512",
                "--metrics=admin",
                "--port=8080",
                "--retry-refused=false"
            ]
        );
        assert_eq!(f.settings[0].id, "ca_files");
        assert_eq!(f.nodes.len(), 2);
        assert_eq!(
            (f.nodes[0].max_concurrent, f.nodes[0].weight, f.nodes[0].kind),
            (Some(4), Some(2), Some(NodeKind::LlamaCpp))
        );
        assert_eq!(
            (
                f.nodes[1].base_url.as_str(),
                f.nodes[1].name.as_deref(),
                f.nodes[1].tls_insecure
            ),
            ("https://gpu-2:11434/v1", Some("gpu-2"), true)
        );
    }

    #[test]
    fn every_mistake_names_its_line() {
        let cases = [
            ("port = 8080\nqueue_sise = 3\n", 2, "unknown setting 'queue_sise'"),
            ("port = \"x\"\n", 1, "'port': invalid value 'x' for '--port <PORT>'"),
            (
                "\nmetrics = \"everyone\"\n",
                2,
                "'metrics': invalid value 'everyone' for '--metrics <METRICS>'",
            ),
            (
                "port = [1, [2]]\n",
                1,
                "'port' must be a string, a number or a boolean, not array",
            ),
            ("port = 80\nport = 81\n", 2, "duplicate key"),
            ("config = \"other.toml\"\n", 1, "unknown setting 'config'"),
            (
                "[[nodes]]\nurl = \"http://a:1\"\nmax_concurent = 2\n",
                3,
                "unknown field `max_concurent`",
            ),
            (
                "\n[[nodes]]\nurl = \"ftp://a\"\n",
                2,
                "only http:// and https:// nodes are supported",
            ),
            (
                "[[nodes]]\nurl = \"http://a:1\"\nkind = \"tgi\"\n",
                1,
                "unknown node kind 'tgi'",
            ),
            (
                "[[nodes]]\nurl = \"http://a:1\"\nweight = 0\n",
                1,
                "weight must be from 1 to 1000",
            ),
            (
                "[[nodes]]\nurl = \"http://a:1\"\n[[nodes]]\nurl = \"http://a:1/v1\"\n",
                3,
                "declared twice",
            ),
            ("[[nodes]]\nname = \"x\"\n", 1, "missing field `url`"),
            ("port = \n", 1, "string values must be quoted"),
        ];
        for (text, line, reason) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                err.starts_with(&format!("configuration file r.toml, line {line}: ")) && err.contains(reason),
                "{text:?} gave {err:?}"
            );
        }
    }
}

//! What the operator gives to register a node (the API, `--node`, the configuration
//! file) and the checks every registration and change goes through: the base URL's
//! form, the capacity and weight, and names and keys without control characters.

use super::{NodeError, NodeKind, MAX_WEIGHT};

/// Normalizes a node URL: `http(s)://host:port[/prefix]`, without a trailing `/` or `/v1`.
pub fn normalize_base_url(raw: &str) -> Result<String, NodeError> {
    let url = url::Url::parse(raw.trim()).map_err(|e| NodeError::InvalidUrl(format!("{raw}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(NodeError::InvalidUrl(format!(
            "{raw}: only http:// and https:// nodes are supported"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) || url.query().is_some() || url.fragment().is_some() {
        return Err(NodeError::InvalidUrl(format!(
            "{raw}: expected http(s)://host[:port][/path]"
        )));
    }
    let mut s = url.as_str().trim_end_matches('/').to_string();
    if let Some(stripped) = s.strip_suffix("/v1") {
        s = stripped.to_string();
    }
    Ok(s)
}

/// What the operator gives to register a node.
#[derive(Debug, Clone, Default)]
pub struct NodeRegistration {
    pub base_url: String,
    pub name: Option<String>,
    pub api_key: Option<String>,
    /// `None`: the health checker tells it from the node's routes.
    pub kind: Option<NodeKind>,
    pub tls_insecure: bool,
    /// `None`: the node's own slots, if it tells them.
    pub max_concurrent: Option<u64>,
    /// `None`: 1.
    pub weight: Option<u64>,
}

/// A name or a key holds no control character: a NUL cannot be stored in PostgreSQL,
/// and a line break in a key would break the header it goes in.
pub(super) fn check_texts(name: Option<&str>, api_key: Option<&str>) -> Result<(), NodeError> {
    for (field, value) in [("name", name), ("api_key", api_key)] {
        if value.is_some_and(|v| v.chars().any(char::is_control)) {
            return Err(NodeError::InvalidValue {
                field,
                message: "must not contain control characters".into(),
            });
        }
    }
    Ok(())
}

/// A capacity is at least 1; a weight is 1 to [`MAX_WEIGHT`].
pub(super) fn check_capacity(max_concurrent: Option<u64>, weight: Option<u64>) -> Result<(), NodeError> {
    if max_concurrent == Some(0) {
        return Err(NodeError::InvalidValue {
            field: "max_concurrent",
            message: "must be at least 1 (or null: no limit)".into(),
        });
    }
    if weight.is_some_and(|w| !(1..=MAX_WEIGHT).contains(&w)) {
        return Err(NodeError::InvalidValue {
            field: "weight",
            message: format!("must be an integer from 1 to {MAX_WEIGHT}"),
        });
    }
    Ok(())
}

impl NodeRegistration {
    /// A `--node` value: `URL`, or `KIND=URL` to set the kind (`ollama=http://gpu-1:11434`).
    pub fn from_static(spec: &str) -> Result<NodeRegistration, NodeError> {
        let spec = spec.trim();
        let (kind, base_url) = match spec.split_once('=') {
            // A URL's scheme comes before any `=` it may hold: a prefix without `:` or `/` is a kind.
            Some((kind, url)) if !kind.contains([':', '/']) => (Some(kind.trim().parse()?), url),
            _ => (None, spec),
        };
        Ok(NodeRegistration {
            base_url: base_url.to_string(),
            kind,
            ..NodeRegistration::default()
        })
    }
}

pub(super) fn default_name(base_url: &str) -> String {
    let host = base_url
        .strip_prefix("http://")
        .or_else(|| base_url.strip_prefix("https://"));
    host.unwrap_or(base_url).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalized_and_checked() {
        assert_eq!(normalize_base_url("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(normalize_base_url("http://h:1/v1/").unwrap(), "http://h:1");
        assert_eq!(normalize_base_url("http://h/x").unwrap(), "http://h/x");
        assert_eq!(normalize_base_url("https://h:8443/v1").unwrap(), "https://h:8443");
        assert!(normalize_base_url("ftp://h").is_err());
        assert!(normalize_base_url("not a url").is_err());
        assert!(normalize_base_url("http://h?q=1").is_err());
    }

    #[test]
    fn static_nodes_may_name_their_kind() {
        let plain = NodeRegistration::from_static("http://h:1").unwrap();
        assert_eq!((plain.kind, plain.base_url.as_str()), (None, "http://h:1"));
        let ollama = NodeRegistration::from_static(" ollama=https://gpu-1:11434 ").unwrap();
        assert_eq!(
            (ollama.kind, ollama.base_url.as_str()),
            (Some(NodeKind::Ollama), "https://gpu-1:11434")
        );
        let err = NodeRegistration::from_static("tgi=http://h:1").unwrap_err();
        assert!(matches!(err, NodeError::InvalidKind(_)), "{err}");
        // An `=` inside the URL is not a kind.
        assert_eq!(NodeRegistration::from_static("http://h/a=b").unwrap().kind, None);
        assert_eq!(default_name("https://h:8443"), "h:8443");
    }
}

//! Node kinds: which inference server a node runs, set by the operator or told from
//! each server's telltale routes. The kind decides where the health probe lists a
//! node's models; it does not change how inference requests are forwarded.
//!
//! The telltales (checked against each server's documentation and source):
//! - Ollama answers `GET /api/version` with `{"version": "…"}` (llama-server does not,
//!   though it also answers Ollama's `/api/tags`), and lists models at `/api/tags`.
//! - llama.cpp's `llama-server` answers `GET /props` with `default_generation_settings`
//!   and `total_slots`.
//! - vLLM's `/v1/models` entries are `"owned_by": "vllm"` (it also serves `/version`).
//! - LM Studio's `/v1/models` entries are `"owned_by": "organization_owner"`, and it
//!   answers its own `GET /api/v0/models`.
//! - Anything else that lists models at `/v1/models` is a generic `openai` node.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use super::NodeError;
use crate::upstream::{CertificateCheck, UpstreamClient, UpstreamError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeKind {
    /// A generic OpenAI-compatible server.
    #[default]
    OpenAi,
    Ollama,
    Vllm,
    /// llama.cpp's `llama-server`.
    LlamaCpp,
    LmStudio,
}

impl NodeKind {
    pub const ALL: [NodeKind; 5] = [
        NodeKind::OpenAi,
        NodeKind::Ollama,
        NodeKind::Vllm,
        NodeKind::LlamaCpp,
        NodeKind::LmStudio,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::OpenAi => "openai",
            NodeKind::Ollama => "ollama",
            NodeKind::Vllm => "vllm",
            NodeKind::LlamaCpp => "llamacpp",
            NodeKind::LmStudio => "lmstudio",
        }
    }

    /// Where the node lists its models.
    pub fn models_path(self) -> &'static str {
        match self {
            NodeKind::Ollama => "/api/tags",
            _ => "/v1/models",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeKind {
    type Err = NodeError;

    fn from_str(s: &str) -> Result<Self, NodeError> {
        NodeKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = NodeKind::ALL.iter().map(|k| k.as_str()).collect();
            NodeError::InvalidKind(format!("unknown node kind '{s}' (one of {})", known.join(", ")))
        })
    }
}

/// The routes asked to tell a node's kind, all at once.
const TELLTALE_PATHS: [&str; 4] = ["/api/version", "/props", "/v1/models", "/api/v0/models"];

/// The JSON each telltale route answered with 200, in [`TELLTALE_PATHS`] order.
#[derive(Debug, Default)]
pub struct Telltales {
    pub api_version: Option<Value>,
    pub props: Option<Value>,
    pub v1_models: Option<Value>,
    pub v0_models: Option<Value>,
}

/// llama-server's slots from its `GET /props` answer.
pub fn slots_of_props(props: &Value) -> Option<u64> {
    props.get("total_slots").and_then(Value::as_u64).filter(|n| *n > 0)
}

impl Telltales {
    /// The slots the node told, if its kind tells them.
    pub fn slots(&self) -> Option<u64> {
        match self.kind() {
            NodeKind::LlamaCpp => self.props.as_ref().and_then(slots_of_props),
            _ => None,
        }
    }

    pub fn kind(&self) -> NodeKind {
        let has = |v: &Option<Value>, field: &str| v.as_ref().is_some_and(|v| v.get(field).is_some());
        let owners: Vec<&str> = self
            .v1_models
            .as_ref()
            .and_then(|v| v.get("data"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("owned_by").and_then(Value::as_str))
            .collect();
        let api_version = self.api_version.as_ref().and_then(|v| v.get("version"));
        if api_version.is_some_and(Value::is_string) {
            NodeKind::Ollama
        } else if has(&self.props, "default_generation_settings") || has(&self.props, "total_slots") {
            NodeKind::LlamaCpp
        } else if owners.contains(&"vllm") {
            NodeKind::Vllm
        } else if owners.contains(&"organization_owner") || has(&self.v0_models, "data") {
            NodeKind::LmStudio
        } else {
            NodeKind::OpenAi
        }
    }
}

/// Asks the telltale routes (concurrently, one round trip) and tells the kind from
/// what they answered ([`Telltales::kind`]). Fails
/// only when no route could be asked at all (connection refused, certificate error):
/// then the node has no kind to tell, and the error says why.
pub async fn detect(
    client: &UpstreamClient,
    base_url: &str,
    api_key: Option<&str>,
    check: CertificateCheck,
    timeout: Duration,
) -> Result<Telltales, UpstreamError> {
    let answers = join_all(
        TELLTALE_PATHS
            .iter()
            .map(|path| async move { client.get(&format!("{base_url}{path}"), api_key, check, timeout).await }),
    )
    .await;
    let mut json = Vec::with_capacity(answers.len());
    let mut first_error = None;
    for answer in answers {
        match answer {
            Ok((200, body)) => json.push(serde_json::from_slice::<Value>(&body).ok()),
            Ok(_) => json.push(None),
            Err(e) => {
                first_error.get_or_insert(e);
                json.push(None);
            }
        }
    }
    if json.iter().all(Option::is_none) {
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    let mut json = json.into_iter();
    let telltales = Telltales {
        api_version: json.next().flatten(),
        props: json.next().flatten(),
        v1_models: json.next().flatten(),
        v0_models: json.next().flatten(),
    };
    Ok(telltales)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_ones_are_named() {
        for kind in NodeKind::ALL {
            assert_eq!(kind.as_str().parse::<NodeKind>().unwrap(), kind);
        }
        let err = "tgi".parse::<NodeKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid kind: unknown node kind 'tgi' (one of openai, ollama, vllm, llamacpp, lmstudio)"
        );
    }

    #[test]
    fn each_server_is_told_by_its_telltales() {
        let models = |owner: &str| Some(json!({"object": "list", "data": [{"id": "m", "owned_by": owner}]}));
        let ollama = Telltales {
            api_version: Some(json!({"version": "0.12.6"})),
            v1_models: models("library"),
            ..Telltales::default()
        };
        assert_eq!(ollama.kind(), NodeKind::Ollama);
        let llamacpp = Telltales {
            props: Some(json!({"default_generation_settings": {}, "total_slots": 4})),
            v1_models: models("llamacpp"),
            ..Telltales::default()
        };
        assert_eq!((llamacpp.kind(), llamacpp.slots()), (NodeKind::LlamaCpp, Some(4)));
        let vllm = Telltales {
            v1_models: models("vllm"),
            ..Telltales::default()
        };
        assert_eq!(vllm.kind(), NodeKind::Vllm);
        let lmstudio = Telltales {
            v1_models: models("organization_owner"),
            ..Telltales::default()
        };
        assert_eq!(lmstudio.kind(), NodeKind::LmStudio);
        let lmstudio_without_models = Telltales {
            v0_models: Some(json!({"object": "list", "data": []})),
            ..Telltales::default()
        };
        assert_eq!(lmstudio_without_models.kind(), NodeKind::LmStudio);
        let generic = Telltales {
            // A server answering some other `/props` or `/api/version` shape is not told by it.
            api_version: Some(json!({"api": 1})),
            props: Some(json!({"name": "x"})),
            v1_models: models("openai"),
            ..Telltales::default()
        };
        assert_eq!(generic.kind(), NodeKind::OpenAi);
    }

    #[test]
    fn ollama_and_others_list_models_at_their_own_route() {
        assert_eq!(NodeKind::Ollama.models_path(), "/api/tags");
        for kind in [NodeKind::OpenAi, NodeKind::Vllm, NodeKind::LlamaCpp, NodeKind::LmStudio] {
            assert_eq!(kind.models_path(), "/v1/models");
        }
    }
}

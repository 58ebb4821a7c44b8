//! The client protocols the proxy speaks and what differs between them: OpenAI's
//! (`/v1/*`), Ollama's (`/ollama/api/*`) and Anthropic's Messages API
//! (`/v1/messages`).
//!
//! Everything else is shared: authentication, admission, routing, fail-over, the
//! lease and its one record. A protocol only says whether a request streams when it
//! does not say, which nodes may serve it, how its stream is framed (the tap's mode)
//! and what its errors look like. It is a `Copy` enum matched where the paths
//! differ, so the OpenAI path pays a comparison, not an allocation or a parse.

use common::protocol::RequestType;

use crate::nodes::NodeKind;
use crate::token::TapMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Ollama,
    Anthropic,
}

impl Protocol {
    pub fn of(kind: RequestType) -> Protocol {
        match kind {
            RequestType::ChatCompletions
            | RequestType::Completions
            | RequestType::Embeddings
            | RequestType::Responses => Protocol::OpenAi,
            RequestType::OllamaChat
            | RequestType::OllamaGenerate
            | RequestType::OllamaEmbed
            | RequestType::OllamaEmbeddings => Protocol::Ollama,
            RequestType::Messages => Protocol::Anthropic,
        }
    }

    /// Whether a request without a `stream` field streams: Ollama's chat and
    /// generate do, everything else does not.
    pub fn streams_by_default(kind: RequestType) -> bool {
        matches!(kind, RequestType::OllamaChat | RequestType::OllamaGenerate)
    }

    /// The only kind of node that may serve the protocol's requests (`None`: any).
    pub fn node_kind(self) -> Option<NodeKind> {
        match self {
            Protocol::Ollama => Some(NodeKind::Ollama),
            Protocol::OpenAi | Protocol::Anthropic => None,
        }
    }

    /// How the tap reads a stream the node sends in this protocol.
    pub fn tap_mode(self) -> TapMode {
        match self {
            Protocol::OpenAi => TapMode::OpenAi,
            Protocol::Ollama => TapMode::Ollama,
            Protocol::Anthropic => TapMode::Anthropic,
        }
    }
}

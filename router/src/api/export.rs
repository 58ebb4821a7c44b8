//! `GET /api/dashboard/export.csv`: usage per day or month × key × node × model as
//! CSV (RFC 4180), for spreadsheets and billing. The figures come from `stats`; this
//! file only parses the query and writes the text.

use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::dashboard::{bad, date, int, key_id, month, param, Params};
use super::ApiError;
use crate::state::AppState;
use crate::stats::{self, ExportQuery, Period, UsageExport};

/// The columns, in order (the first is `month` when `group=month`).
pub const COLUMNS: [&str; 14] = [
    "date",
    "key_id",
    "key_name",
    "node_id",
    "node_name",
    "model",
    "request_count",
    "success_count",
    "error_count",
    "cancelled_count",
    "estimated_count",
    "input_tokens",
    "output_tokens",
    "total_tokens",
];

/// Usage per day or month, client key, node and model in a time zone, as CSV.
#[utoipa::path(get, path = "/api/dashboard/export.csv", tag = "dashboard", security(("admin_key" = [])),
    params(("group" = Option<String>, Query, description = "day (default) or month"),
        ("from" = Option<String>, Query, description = "First day (YYYY-MM-DD) or month (YYYY-MM); default: 30 days or 12 months ending today"),
        ("to" = Option<String>, Query, description = "Last day (YYYY-MM-DD) or month (YYYY-MM); default today"),
        ("tz" = Option<String>, Query, description = "IANA time zone (default UTC)"),
        ("key_id" = Option<String>, Query, description = "Only this client key (an id, or anonymous)"),
        ("node_id" = Option<i64>, Query, description = "Only this node"), ("model" = Option<String>, Query, description = "Only this model")),
    responses((status = 200, content_type = "text/csv", description = "date (or month), key_id, key_name, node_id, node_name, model, request_count, success_count, error_count, cancelled_count, estimated_count, input_tokens, output_tokens, total_tokens"),
        (status = 400, description = "Bad parameter")))]
pub async fn export_csv(State(st): State<AppState>, Query(p): Params) -> Result<Response, ApiError> {
    let period = match param(&p, "group") {
        None | Some("day") => Period::Day,
        Some("month") => Period::Month,
        Some(g) => return Err(bad("group", format!("'{g}' is neither day nor month"))),
    };
    let (from, to) = match period {
        Period::Day => (date(&p, "from")?, date(&p, "to")?),
        Period::Month => (month(&p, "from")?, month(&p, "to")?),
    };
    let q = ExportQuery {
        period,
        from,
        to,
        tz: param(&p, "tz").map(str::to_string),
        key_id: key_id(&p)?,
        node_id: int(&p, "node_id")?,
        model: param(&p, "model").map(str::to_string),
    };
    let export = stats::usage_export(&st.store, st.balancer.registry(), &st.keys, q).await?;
    let filename = format!(
        "attachment; filename=\"llm-router-usage-{}.csv\"",
        if period == Period::Day { "daily" } else { "monthly" }
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, filename),
        ],
        to_csv(&export),
    )
        .into_response())
}

fn to_csv(export: &UsageExport) -> String {
    let mut out = String::new();
    let mut header = COLUMNS;
    if export.period == Period::Month {
        header[0] = "month";
    }
    out.push_str(&header.join(","));
    out.push_str("\r\n");
    for r in &export.rows {
        let t = &r.totals;
        let key_id = r.key_id.map(|k| k.to_string()).unwrap_or_default();
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\r\n",
            r.period,
            key_id,
            field(&r.key_name),
            r.node_id,
            field(&r.node_name),
            field(&r.model),
            t.request_count,
            t.success_count,
            t.error_count,
            t.cancelled_count,
            t.estimated_count,
            t.input_tokens,
            t.output_tokens,
            t.total_tokens,
        );
    }
    out
}

/// A text field: quoted when it holds a comma, a quote or a line break (quotes doubled).
fn field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(field("llama-3-8b"), "llama-3-8b");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
    }
}

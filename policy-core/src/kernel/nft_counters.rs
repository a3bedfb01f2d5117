//! The drop counters of `inet pppgate`, by reason: every drop rule of the layout carries a counter
//! and a comment naming why it drops (`blocked_from`, `pending_to`, `unpoliced_from`, ...).
//! Read through `nft -j list table` (one spawn; `pppgate diag` and the metrics runs use it, never
//! the connect path), so whatever rules the layout has, each commented counter-drop rule is a
//! reason.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde::Serialize;
use serde_json::Value;

use super::NFT_TABLE;
use crate::error::{Error, Result};

/// One reason's counter (summed over rules that share the comment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DropCounter {
    pub packets: u64,
    pub bytes: u64,
}

/// Drop counters by reason; `None` when the table does not exist.
pub fn read() -> Result<Option<BTreeMap<String, DropCounter>>> {
    let nft = super::nft::find_nft();
    let program = nft.display().to_string();
    let out = Command::new(&nft)
        .args(["-j", "list", "table", "inet", NFT_TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Exec { program: program.clone(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(Error::ExecFailed { program, stderr });
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::ExecFailed { program, stderr: format!("output is not JSON: {e}") })?;
    Ok(Some(parse(&v)))
}

/// Counters of every rule that has a comment, a counter and a `drop` verdict.
pub fn parse(v: &Value) -> BTreeMap<String, DropCounter> {
    let mut out: BTreeMap<String, DropCounter> = BTreeMap::new();
    let Some(items) = v.get("nftables").and_then(Value::as_array) else { return out };
    for item in items {
        let Some(rule) = item.get("rule") else { continue };
        let Some(comment) = rule.get("comment").and_then(Value::as_str) else { continue };
        let Some(expr) = rule.get("expr").and_then(Value::as_array) else { continue };
        let drops = expr.iter().any(|e| e.get("drop").is_some());
        let counter = expr.iter().find_map(|e| e.get("counter"));
        if let (true, Some(c)) = (drops, counter) {
            let entry = out.entry(comment.to_string()).or_default();
            entry.packets += c.get("packets").and_then(Value::as_u64).unwrap_or(0);
            entry.bytes += c.get("bytes").and_then(Value::as_u64).unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commented_counter_drops_are_reasons() {
        let v: Value = serde_json::from_str(
            r#"{"nftables": [
              {"metainfo": {"version": "1.0.6"}},
              {"table": {"family": "inet", "name": "pppgate", "handle": 1}},
              {"rule": {"family": "inet", "table": "pppgate", "chain": "from_session", "handle": 5,
                "comment": "blocked_from",
                "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                          "right": "@blocked_v4"}}, {"counter": {"packets": 3, "bytes": 252}}, {"drop": null}]}},
              {"rule": {"family": "inet", "table": "pppgate", "chain": "from_session", "handle": 6,
                "expr": [{"counter": {"packets": 9, "bytes": 9}}, {"drop": null}]}},
              {"rule": {"family": "inet", "table": "pppgate", "chain": "to_session", "handle": 7,
                "comment": "not_a_drop", "expr": [{"counter": {"packets": 1, "bytes": 1}}, {"return": null}]}},
              {"rule": {"family": "inet", "table": "pppgate", "chain": "x", "handle": 8,
                "comment": "blocked_from", "expr": [{"counter": {"packets": 1, "bytes": 48}}, {"drop": null}]}}
            ]}"#,
        )
        .unwrap();
        let c = parse(&v);
        assert_eq!(c.len(), 1);
        assert_eq!(c["blocked_from"], DropCounter { packets: 4, bytes: 300 });
    }
}

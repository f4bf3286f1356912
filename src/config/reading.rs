//! The canonical policy document (`config::version`) as people read it:
//! its sections (principals, check reporters, each environment, each
//! project), each key rendered as a value, and what changed between two
//! versions. Read as plain JSON, key by key, rather than as the structs
//! that wrote it: a key a newer server adds shows up without a change here,
//! and a document is never rejected for its shape. An environment's keys
//! the document leaves out at their default (`LEFT_OUT_AT_DEFAULT`) are
//! read at that default. `prodgate policy` and the console's `/policy` both
//! use it.

use super::LEFT_OUT_AT_DEFAULT;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// One changed key: `old` `None` means added, `new` `None` removed; an
/// empty `key` means the whole section (a project, an environment, a
/// principal) was added or removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub section: String,
    pub key: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// The document cut into named sections of keys: `policy` (the top-level
/// keys), `principal NAME`, `environment NAME`, `project NAME` and
/// `project NAME environment ENV`, in document order.
pub fn sections(doc: &Map<String, Value>) -> Vec<(String, Map<String, Value>)> {
    let mut out = Vec::new();
    let mut top = Map::new();
    let named = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    let fields = |v: &Value, skip: &[&str]| -> Map<String, Value> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !skip.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let environment = |e: &Value| {
        let mut keys = fields(e, &["name"]);
        for (key, default) in LEFT_OUT_AT_DEFAULT {
            keys.entry(key).or_insert(Value::from(default));
        }
        keys
    };
    for (key, value) in doc {
        match key.as_str() {
            "principals" => {
                for p in list(value) {
                    out.push((format!("principal {}", named(&p)), fields(&p, &["name"])));
                }
            }
            "environments" => {
                for e in list(value) {
                    out.push((format!("environment {}", named(&e)), environment(&e)));
                }
            }
            "projects" => {
                for p in list(value) {
                    let name = named(&p);
                    out.push((
                        format!("project {name}"),
                        fields(&p, &["name", "environments"]),
                    ));
                    for e in list(&p["environments"]) {
                        out.push((
                            format!("project {name} environment {}", named(&e)),
                            environment(&e),
                        ));
                    }
                }
            }
            _ => {
                top.insert(key.clone(), value.clone());
            }
        }
    }
    out.insert(0, ("policy".to_owned(), top));
    out
}

/// Every key that differs between `old` and `new`, section by section
/// (sections of `new` in its order, then those only `old` has).
pub fn changes(old: &Map<String, Value>, new: &Map<String, Value>) -> Vec<Change> {
    let old: Vec<_> = sections(old);
    let new: Vec<_> = sections(new);
    let find = |list: &[(String, Map<String, Value>)], name: &str| {
        list.iter().find(|(n, _)| n == name).map(|(_, m)| m.clone())
    };
    let mut out = Vec::new();
    for (name, keys) in &new {
        match find(&old, name) {
            None => out.push(Change {
                section: name.clone(),
                key: String::new(),
                old: None,
                new: Some(Value::Object(keys.clone())),
            }),
            Some(before) => {
                let all: BTreeMap<&String, ()> =
                    before.keys().chain(keys.keys()).map(|k| (k, ())).collect();
                for key in all.keys() {
                    let (o, n) = (before.get(*key), keys.get(*key));
                    if o != n {
                        out.push(Change {
                            section: name.clone(),
                            key: (*key).clone(),
                            old: o.cloned(),
                            new: n.cloned(),
                        });
                    }
                }
            }
        }
    }
    for (name, keys) in &old {
        if find(&new, name).is_none() {
            out.push(Change {
                section: name.clone(),
                key: String::new(),
                old: Some(Value::Object(keys.clone())),
                new: None,
            });
        }
    }
    out
}

/// A value as a person reads it: strings bare, lists comma-separated,
/// `*_seconds` as durations by the caller, the rest as compact JSON.
pub fn render(v: &Value) -> String {
    match v {
        Value::Null => "(none)".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "(none)".to_owned(),
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// `key: value`, with `*_seconds` keys shown as durations (`approval_ttl:
/// 1day`); `None` for keys at a value that says nothing (unset, false,
/// empty), which the summary leaves out.
pub fn entry(key: &str, v: &Value) -> Option<String> {
    match v {
        Value::Null | Value::Bool(false) => None,
        Value::Array(a) if a.is_empty() => None,
        Value::Number(n) if key.ends_with("_seconds") => {
            let secs = n.as_u64()?;
            let name = key.trim_end_matches("_seconds");
            Some(format!(
                "{name}: {}",
                humantime::format_duration(Duration::from_secs(secs))
            ))
        }
        _ => Some(format!("{key}: {}", render(v))),
    }
}

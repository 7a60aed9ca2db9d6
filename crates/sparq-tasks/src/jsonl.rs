//! JSON-lines reading with errors that name the file, the line and the field.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::TaskError;

/// The non-blank lines of a JSON-lines text with their 1-based line numbers.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// Parses one line as a JSON object.
pub(crate) fn parse_object(
    path: &Path,
    line: usize,
    text: &str,
) -> Result<Map<String, Value>, TaskError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(TaskError::InvalidJson {
            path: path.to_path_buf(),
            line,
            message: format!("expected a JSON object, found {}", kind(&other)),
        }),
        Err(e) => Err(TaskError::InvalidJson {
            path: path.to_path_buf(),
            line,
            message: e.to_string(),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn field<'a>(
    path: &Path,
    line: usize,
    obj: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a Value, TaskError> {
    match obj.get(name) {
        Some(Value::Null) | None => Err(TaskError::MissingField {
            path: path.to_path_buf(),
            line,
            field: name.to_string(),
        }),
        Some(v) => Ok(v),
    }
}

fn invalid(path: &Path, line: usize, name: &str, message: String) -> TaskError {
    TaskError::InvalidField {
        path: path.to_path_buf(),
        line,
        field: name.to_string(),
        message,
    }
}

/// A required string field.
pub(crate) fn string_field(
    path: &Path,
    line: usize,
    obj: &Map<String, Value>,
    name: &str,
) -> Result<String, TaskError> {
    match field(path, line, obj, name)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(invalid(
            path,
            line,
            name,
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

/// A required string or integer field, as text (ids are either in the wild).
pub(crate) fn id_field(
    path: &Path,
    line: usize,
    obj: &Map<String, Value>,
    name: &str,
) -> Result<String, TaskError> {
    match field(path, line, obj, name)? {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        other => Err(invalid(
            path,
            line,
            name,
            format!("expected a string or an integer, found {}", kind(other)),
        )),
    }
}

/// A required non-negative integer field.
pub(crate) fn usize_field(
    path: &Path,
    line: usize,
    obj: &Map<String, Value>,
    name: &str,
) -> Result<usize, TaskError> {
    let v = field(path, line, obj, name)?;
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            invalid(
                path,
                line,
                name,
                format!("expected a non-negative integer, found {v}"),
            )
        })
}

/// A required non-empty list of strings.
pub(crate) fn string_list_field(
    path: &Path,
    line: usize,
    obj: &Map<String, Value>,
    name: &str,
) -> Result<Vec<String>, TaskError> {
    let v = field(path, line, obj, name)?;
    let Value::Array(items) = v else {
        return Err(invalid(
            path,
            line,
            name,
            format!("expected a list of strings, found {}", kind(v)),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) => out.push(s.clone()),
            other => {
                return Err(invalid(
                    path,
                    line,
                    name,
                    format!("item {i} should be a string, found {}", kind(other)),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(invalid(path, line, name, "the list is empty".to_string()));
    }
    Ok(out)
}

/// Follows a dotted path (`answer.aliases`) through nested objects; reports the full
/// dotted name when any step is missing.
pub(crate) fn nested<'a>(
    path: &Path,
    line: usize,
    obj: &'a Map<String, Value>,
    dotted: &str,
) -> Result<&'a Value, TaskError> {
    let mut current = obj;
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        let missing = || TaskError::MissingField {
            path: path.to_path_buf(),
            line,
            field: dotted.to_string(),
        };
        let v = match current.get(part) {
            Some(Value::Null) | None => return Err(missing()),
            Some(v) => v,
        };
        if parts.peek().is_none() {
            return Ok(v);
        }
        current = v.as_object().ok_or_else(|| {
            invalid(
                path,
                line,
                dotted,
                format!("`{part}` should be an object, found {}", kind(v)),
            )
        })?;
    }
    Err(TaskError::MissingField {
        path: path.to_path_buf(),
        line,
        field: dotted.to_string(),
    })
}

/// A list of strings at a dotted path; may be empty.
pub(crate) fn nested_strings(
    path: &Path,
    line: usize,
    obj: &Map<String, Value>,
    dotted: &str,
) -> Result<Vec<String>, TaskError> {
    let v = nested(path, line, obj, dotted)?;
    let items = v.as_array().ok_or_else(|| {
        invalid(
            path,
            line,
            dotted,
            format!("expected a list of strings, found {}", kind(v)),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str().map(str::to_string).ok_or_else(|| {
                invalid(
                    path,
                    line,
                    dotted,
                    format!("item {i} should be a string, found {}", kind(item)),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_line_and_field() {
        let p = Path::new("f.jsonl");
        let err = parse_object(p, 3, "{not json").unwrap_err().to_string();
        assert!(err.contains("f.jsonl") && err.contains("line 3"), "{err}");
        let err = parse_object(p, 4, "[1]").unwrap_err().to_string();
        assert!(
            err.contains("expected a JSON object, found an array"),
            "{err}"
        );
        let obj = parse_object(p, 5, r#"{"a": {"b": 1}, "s": 2, "l": ["x", 3]}"#).unwrap();
        let err = string_field(p, 5, &obj, "id").unwrap_err().to_string();
        assert!(
            err.contains("missing field `id`") && err.contains("line 5"),
            "{err}"
        );
        let err = string_field(p, 5, &obj, "s").unwrap_err().to_string();
        assert!(
            err.contains("`s`") && err.contains("found a number"),
            "{err}"
        );
        let err = nested(p, 5, &obj, "a.c").unwrap_err().to_string();
        assert!(err.contains("missing field `a.c`"), "{err}");
        let err = nested_strings(p, 5, &obj, "a.b").unwrap_err().to_string();
        assert!(err.contains("`a.b`"), "{err}");
        let err = string_list_field(p, 5, &obj, "l").unwrap_err().to_string();
        assert!(err.contains("item 1 should be a string"), "{err}");
        assert_eq!(id_field(p, 5, &obj, "s").unwrap(), "2");
    }

    #[test]
    fn blank_lines_are_skipped_but_numbered() {
        let got: Vec<_> = lines("a\n\n  \nb\n").collect();
        assert_eq!(got, vec![(1, "a"), (4, "b")]);
    }
}

//! How the CLI prints answers: `--json` prints the API's JSON as it came; otherwise lists are
//! tables, objects are `field: value` lines, and a new key's secret is printed alone on stdout so
//! `key=$(mcpgw keys create ...)` works.

use serde_json::Value;

pub enum View {
    /// A paginated list: columns are JSON pointers into each item (`mcp_config/name`).
    Table(&'static [&'static str]),
    /// An unpaginated `{"items": [...]}`.
    Items(&'static [&'static str]),
    /// One resource.
    Object,
    /// A document to read or keep as it is (exports, server settings).
    Json,
    /// A key with its secret (create, rotate).
    Secret,
    /// The import report.
    Import,
    /// A change with no body to show (204).
    Done(String),
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(columns: &[&str], items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(item.pointer(&format!("/{c}")).unwrap_or(&Value::Null))).collect())
        .collect();
    let headers: Vec<String> = columns.iter().map(|c| c.replace('/', ".").to_uppercase()).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([headers[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(&headers);
    rows.iter().for_each(|r| line(r));
}

fn fields(v: &Value) {
    match v.as_object() {
        Some(map) => {
            for (k, v) in map {
                println!("{k}: {}", cell(v));
            }
        }
        None => println!("{}", cell(v)),
    }
}

fn pretty(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn print(view: &View, body: &Value, json: bool) {
    if json {
        if !body.is_null() {
            pretty(body);
        }
        return;
    }
    let items = || body["items"].as_array().cloned().unwrap_or_default();
    match view {
        View::Table(columns) | View::Items(columns) => table(columns, &items()),
        View::Object => fields(body),
        View::Json => pretty(body),
        View::Secret => {
            println!("{}", cell(&body["key"]));
            eprintln!(
                "key id {} for {} in {}: store the key now, it is never shown again",
                cell(&body["id"]),
                cell(&body["user_email"]),
                cell(&body["project_name"])
            );
        }
        View::Import => {
            let dry = body["dry_run"] == true;
            for e in body["entries"].as_array().into_iter().flatten() {
                let mut line = format!("{:<8} {:<10} {}", cell(&e["action"]), cell(&e["kind"]), cell(&e["source"]));
                if let Some(t) = e["target"].as_str() {
                    line.push_str(&format!(" -> {t}"));
                }
                if let Some(d) = e["detail"].as_str() {
                    line.push_str(&format!(" ({d})"));
                }
                println!("{line}");
            }
            let c = &body["created"];
            println!(
                "{}{} user(s), {} config(s) with {} server(s), {} project(s), {} membership(s), {} key(s){}",
                if dry { "dry run, nothing written: would create " } else { "created " },
                cell(&c["users"]),
                cell(&c["mcp_configs"]),
                cell(&c["servers"]),
                cell(&c["projects"]),
                cell(&c["members"]),
                cell(&c["api_keys"]),
                body["revision"].as_u64().map(|r| format!("; revision {r}")).unwrap_or_default()
            );
        }
        View::Done(message) => println!("{message}"),
    }
}

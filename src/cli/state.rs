//! `mcpgw plan`, `mcpgw apply`, `mcpgw export`: the gateway's tenants as one YAML or JSON document.
//! `${NAME}` in the document is replaced by the environment variable NAME of this process (secrets
//! stay out of the file); a missing variable is an error, reported with where it is used.

use std::path::{Path, PathBuf};

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::api::{Api, Failure, Request, exit};

#[derive(Args)]
pub struct StateArgs {
    /// The document, YAML or JSON (`-` for standard input).
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Also delete users, configs, projects, members and keys the document does not name.
    #[arg(long)]
    prune: bool,
}

#[derive(Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Refuse (exit 6) unless the state is still at this revision (the one `plan` showed).
    #[arg(long)]
    expected_revision: Option<u64>,
    /// Write the keys this apply creates to FILE (mode 0600) as JSON: `[{name, project, key}]`.
    #[arg(long, value_name = "FILE")]
    keys_out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Where to write the document: JSON if the name ends in `.json`, YAML otherwise; default: YAML
    /// on standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub async fn plan(api: &Api, args: StateArgs, json_out: bool) -> Result<(), Failure> {
    let doc = read(&args.file)?;
    let answer = api.send(&request("plan", doc, args.prune, None)).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
    } else {
        print_changes(&answer);
        let n = answer["changes"].as_array().map_or(0, Vec::len);
        println!(
            "{} at revision {} (apply with --expected-revision {} to refuse if it moves)",
            count(n),
            answer["revision"],
            answer["revision"]
        );
    }
    Ok(())
}

pub async fn apply(api: &Api, args: ApplyArgs, json_out: bool) -> Result<(), Failure> {
    let doc = read(&args.state.file)?;
    let answer = api.send(&request("apply", doc, args.state.prune, args.expected_revision)).await?;
    let keys: Vec<Value> = answer["created_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| json!({"name": k["name"], "project": k["project"], "key": k["key"]}))
        .collect();
    if let Some(path) = &args.keys_out {
        write_private(path, format!("{}\n", serde_json::to_string_pretty(&keys).unwrap_or_default()).as_bytes())?;
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
        return Ok(());
    }
    print_changes(&answer);
    let n = answer["changes"].as_array().map_or(0, Vec::len);
    println!(
        "{}; revision {}",
        if n == 0 { "nothing to do".to_string() } else { format!("applied {}", count(n)) },
        answer["revision"]
    );
    match &args.keys_out {
        Some(path) if !keys.is_empty() => println!("{} new key(s) written to {}", keys.len(), path.display()),
        Some(_) => {}
        None => {
            for k in &keys {
                println!("new key {}/{}: {}", str_of(&k["project"]), str_of(&k["name"]), str_of(&k["key"]));
            }
            if !keys.is_empty() {
                println!("(shown once: store them now, or pass --keys-out FILE)");
            }
        }
    }
    Ok(())
}

pub async fn export(api: &Api, args: ExportArgs) -> Result<(), Failure> {
    let doc = api.send(&Request::get(&["state"])).await?;
    let as_json = args.output.as_ref().is_some_and(|p| p.extension().is_some_and(|e| e == "json"));
    let text = if as_json {
        format!("{}\n", serde_json::to_string_pretty(&doc).unwrap_or_default())
    } else {
        serde_norway::to_string(&doc).map_err(|e| Failure::new(exit::API_ERROR, e.to_string()))?
    };
    match &args.output {
        Some(path) => write_private(path, text.as_bytes()),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn request(action: &str, doc: Value, prune: bool, expected_revision: Option<u64>) -> Request {
    Request::new(Method::POST, &["state", action])
        .query("prune", prune.then_some(true))
        .query("expected_revision", expected_revision)
        .body(doc)
}

/// Reads YAML or JSON (JSON is YAML) and fills in `${NAME}` from the environment.
fn read(path: &Path) -> Result<Value, Failure> {
    let text =
        if path.as_os_str() == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) }
            .map_err(|e| Failure::new(exit::INVALID, format!("cannot read {}: {e}", path.display())))?;
    let mut doc: Value = serde_norway::from_str(&text)
        .map_err(|e| Failure::new(exit::INVALID, format!("{} is not valid YAML or JSON: {e}", path.display())))?;
    let mut missing = Vec::new();
    substitute(&mut doc, String::new(), &|name| std::env::var(name).ok(), &mut missing);
    if !missing.is_empty() {
        let lines: Vec<String> = missing.iter().map(|(at, name)| format!("\n  {at}: ${{{name}}} is not set")).collect();
        return Err(Failure::new(exit::INVALID, format!("the document uses unset variables:{}", lines.concat())));
    }
    Ok(doc)
}

/// Replaces every `${NAME}` in the strings of `v` by `env(NAME)`, recording the unset ones.
fn substitute(v: &mut Value, at: String, env: &dyn Fn(&str) -> Option<String>, missing: &mut Vec<(String, String)>) {
    static VAR: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}").expect("static regex"));
    match v {
        Value::String(s) if s.contains("${") => {
            let replaced = VAR.replace_all(s, |caps: &regex::Captures| match env(&caps[1]) {
                Some(value) => value,
                None => {
                    missing.push((if at.is_empty() { "/".into() } else { at.clone() }, caps[1].to_string()));
                    String::new()
                }
            });
            *s = replaced.into_owned();
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, format!("{at}/{i}"), env, missing);
            }
        }
        Value::Object(fields) => {
            for (k, item) in fields.iter_mut() {
                substitute(item, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), env, missing);
            }
        }
        _ => {}
    }
}

fn print_changes(answer: &Value) {
    for c in answer["changes"].as_array().into_iter().flatten() {
        let sign = match c["action"].as_str() {
            Some("create") => "+",
            Some("delete") => "-",
            _ => "~",
        };
        let fields: Vec<&str> = c["fields"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let detail = if fields.is_empty() { String::new() } else { format!(" ({})", fields.join(", ")) };
        println!("{sign} {} {} {}{detail}", str_of(&c["action"]), str_of(&c["kind"]), str_of(&c["name"]));
    }
}

fn count(n: usize) -> String {
    match n {
        0 => "no changes".into(),
        1 => "1 change".into(),
        n => format!("{n} changes"),
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Writes a file only its owner can read (it may hold keys, or secrets' shapes).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    shared::snapshot_file::write_bytes(path, bytes)
        .map_err(|e| Failure::new(exit::API_ERROR, format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_filled_in_and_missing_ones_are_reported_where_used() {
        let mut doc = json!({"configs": [{"servers": [{"config": {"env": {"TOKEN": "${TOKEN}", "MIXED": "a-${TOKEN}-${NOPE}"}}}]}]});
        let env = |name: &str| (name == "TOKEN").then(|| "s3cret".to_string());
        let mut missing = Vec::new();
        substitute(&mut doc, String::new(), &env, &mut missing);
        assert_eq!(doc["configs"][0]["servers"][0]["config"]["env"]["TOKEN"], "s3cret");
        assert_eq!(missing, vec![("/configs/0/servers/0/config/env/MIXED".to_string(), "NOPE".to_string())]);
    }
}

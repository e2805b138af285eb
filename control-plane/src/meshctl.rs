//! `meshctl`: apply, get, delete, proxies and history against meshd's API, kubectl style.

use std::io::Read;
use std::time::Instant;

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::client::ApiClient;
use crate::resource::Kind;
use crate::validate::parse_gateway_duration;

/// Output format of `get`, `proxies` and `history`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

/// One meshctl invocation.
#[derive(Debug)]
pub enum Command {
    Apply {
        file: String,
        wait: bool,
        timeout: String,
    },
    Get {
        kind: String,
        name: Option<String>,
        namespace: Option<String>,
        output: Output,
    },
    Delete {
        kind: String,
        name: String,
        namespace: String,
    },
    Proxies {
        output: Output,
    },
    History {
        output: Output,
    },
    TokenCreate {
        namespace: String,
        service_account: String,
        ttl: String,
        output: Output,
    },
    CaBundle,
}

/// Runs `command`; returns the text to print.
pub async fn run(client: &ApiClient, command: Command) -> anyhow::Result<String> {
    match command {
        Command::Apply {
            file,
            wait,
            timeout,
        } => apply(client, &file, wait, &timeout).await,
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => get(client, &kind, name, namespace, output).await,
        Command::Delete {
            kind,
            name,
            namespace,
        } => {
            let kind = parse_kind(&kind)?;
            let body = call(
                client,
                Method::DELETE,
                &format!("/v1/resources/{kind}/{namespace}/{name}"),
                None,
            )
            .await?;
            Ok(format!(
                "{} {namespace}/{name} deleted (revision {})\n",
                kind.as_str().to_lowercase(),
                body["revision"]
            ))
        }
        Command::Proxies { output } => {
            let body = call(client, Method::GET, "/v1/proxies", None).await?;
            render(&body, output, proxies_table)
        }
        Command::History { output } => {
            let body = call(client, Method::GET, "/v1/history", None).await?;
            render(&body, output, history_table)
        }
        Command::TokenCreate {
            namespace,
            service_account,
            ttl,
            output,
        } => {
            let ttl = parse_ttl(&ttl)?;
            let path = format!(
                "/v1/tokens?namespace={namespace}&serviceAccount={service_account}&ttlSeconds={ttl}"
            );
            let body = call(client, Method::POST, &path, None).await?;
            match output {
                Output::Table => Ok(format!("{}\n", s(&body["token"]))),
                other => render(&body, other, |_| String::new()),
            }
        }
        Command::CaBundle => {
            let (status, bytes) = client.request(Method::GET, "/v1/ca/bundle", None).await?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if !status.is_success() {
                bail!("{} ({status})", text.trim());
            }
            Ok(text)
        }
    }
}

/// A token lifetime: `90s`, `30m`, `24h` or `30d`, in seconds.
fn parse_ttl(ttl: &str) -> anyhow::Result<u64> {
    let split = ttl.find(|c: char| !c.is_ascii_digit()).unwrap_or(ttl.len());
    let (num, unit) = ttl.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("--ttl `{ttl}` is not a duration (e.g. 1h, 24h, 30d)"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--ttl `{ttl}`: unknown unit `{unit}` (use s, m, h or d)"),
    };
    Ok(n * scale)
}

fn parse_kind(kind: &str) -> anyhow::Result<Kind> {
    Kind::from_user(kind)
        .with_context(|| format!("unknown kind `{kind}` (services, workloads, httproutes)"))
}

/// Sends a request; a non-2xx answer becomes an error carrying meshd's message.
async fn call(
    client: &ApiClient,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<Value> {
    let (status, bytes) = client.request(method, path, body).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    if status.is_success() {
        return Ok(value);
    }
    let message = value["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string());
    match status {
        StatusCode::UNPROCESSABLE_ENTITY => bail!("rejected, nothing was applied: {message}"),
        _ => bail!("{message} ({status})"),
    }
}

async fn apply(
    client: &ApiClient,
    file: &str,
    wait: bool,
    timeout: &str,
) -> anyhow::Result<String> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read stdin")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    let timeout_ms =
        parse_gateway_duration(timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let started = Instant::now();
    let body = call(client, Method::POST, "/v1/apply", Some(text))
        .await
        .with_context(|| format!("applying {file}"))?;
    let mut out = String::new();
    for change in body["changes"].as_array().into_iter().flatten() {
        let key = &change["key"];
        out.push_str(&format!(
            "{}/{} {}\n",
            key["kind"].as_str().unwrap_or("?").to_lowercase(),
            key["name"].as_str().unwrap_or("?"),
            change["action"].as_str().unwrap_or("?")
        ));
    }
    if !wait {
        return Ok(out);
    }
    let generation = body["generation"].as_u64().unwrap_or(0);
    let outcome = call(
        client,
        Method::GET,
        &format!("/v1/wait?generation={generation}&timeoutMs={timeout_ms}"),
        None,
    )
    .await?;
    let elapsed = started.elapsed();
    let synced = outcome["synced"].as_array().map_or(0, Vec::len);
    let nacked = outcome["nacked"].as_array().cloned().unwrap_or_default();
    let pending = outcome["pending"].as_array().cloned().unwrap_or_default();
    if nacked.is_empty() && pending.is_empty() {
        out.push_str(&format!(
            "{synced} proxies in sync with generation {generation} ({} ms after apply)\n",
            elapsed.as_millis()
        ));
        return Ok(out);
    }
    let mut why = String::new();
    for n in &nacked {
        why.push_str(&format!(
            "\n  {} NACKed: {}",
            n[0].as_str().unwrap_or("?"),
            n[1]["message"].as_str().unwrap_or("?")
        ));
    }
    for p in &pending {
        why.push_str(&format!(
            "\n  {} did not answer within {timeout}",
            p.as_str().unwrap_or("?")
        ));
    }
    print!("{out}");
    bail!("generation {generation} is not in effect everywhere ({synced} proxies in sync):{why}")
}

async fn get(
    client: &ApiClient,
    kind: &str,
    name: Option<String>,
    namespace: Option<String>,
    output: Output,
) -> anyhow::Result<String> {
    let kind = parse_kind(kind)?;
    let body = match &name {
        Some(n) => {
            let ns = namespace.as_deref().unwrap_or("default");
            call(
                client,
                Method::GET,
                &format!("/v1/resources/{kind}/{ns}/{n}"),
                None,
            )
            .await?
        }
        None => {
            let q = namespace
                .map(|ns| format!("?namespace={ns}"))
                .unwrap_or_default();
            call(
                client,
                Method::GET,
                &format!("/v1/resources/{kind}{q}"),
                None,
            )
            .await?
        }
    };
    let list = match body {
        Value::Array(items) => items,
        one => vec![one],
    };
    let rows = |items: &Value| resources_table(kind, items);
    render(&Value::Array(list), output, rows)
}

fn render(
    value: &Value,
    output: Output,
    table: impl Fn(&Value) -> String,
) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Output::Yaml => match value {
            Value::Array(items) => items
                .iter()
                .map(serde_yaml_ng::to_string)
                .collect::<Result<Vec<_>, _>>()?
                .join("---\n"),
            other => serde_yaml_ng::to_string(other)?,
        },
        Output::Table => table(value),
    })
}

/// Aligns columns like kubectl.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("   ");
        s = s.trim_end().to_string();
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

fn labels(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

fn resources_table(kind: Kind, items: &Value) -> String {
    let items = items.as_array().cloned().unwrap_or_default();
    match kind {
        Kind::Service => table(
            &["NAMESPACE", "NAME", "VIP", "PORTS", "SELECTOR"],
            items
                .iter()
                .map(|r| {
                    let ports = r["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            let target = p["targetPort"]
                                .as_u64()
                                .map(|t| format!(":{t}"))
                                .unwrap_or_default();
                            let proto = p["appProtocol"]
                                .as_str()
                                .map(|a| format!("/{a}"))
                                .unwrap_or_default();
                            format!("{}{target}{proto}", p["port"])
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    vec![
                        s(&r["metadata"]["namespace"]),
                        s(&r["metadata"]["name"]),
                        s(&r["spec"]["vip"]),
                        ports,
                        labels(&r["spec"]["selector"]),
                    ]
                })
                .collect(),
        ),
        Kind::Workload => table(
            &["NAMESPACE", "NAME", "ADDRESS", "SERVICE-ACCOUNT", "LABELS"],
            items
                .iter()
                .map(|r| {
                    vec![
                        s(&r["metadata"]["namespace"]),
                        s(&r["metadata"]["name"]),
                        s(&r["spec"]["address"]),
                        s(&r["spec"]["serviceAccount"]),
                        labels(&r["metadata"]["labels"]),
                    ]
                })
                .collect(),
        ),
        Kind::PeerAuthentication => table(
            &["NAMESPACE", "NAME", "MODE", "SELECTOR"],
            items
                .iter()
                .map(|r| {
                    vec![
                        s(&r["metadata"]["namespace"]),
                        s(&r["metadata"]["name"]),
                        s(&r["spec"]["mtls"]["mode"]),
                        labels(&r["spec"]["selector"]["matchLabels"]),
                    ]
                })
                .collect(),
        ),
        Kind::AuthorizationPolicy => table(
            &["NAMESPACE", "NAME", "ACTION", "RULES", "SELECTOR"],
            items
                .iter()
                .map(|r| {
                    let rules = r["spec"]["rules"].as_array().map_or(0, Vec::len);
                    vec![
                        s(&r["metadata"]["namespace"]),
                        s(&r["metadata"]["name"]),
                        r["spec"]["action"].as_str().unwrap_or("ALLOW").to_string(),
                        rules.to_string(),
                        labels(&r["spec"]["selector"]["matchLabels"]),
                    ]
                })
                .collect(),
        ),
        Kind::BackendPolicy => table(
            &["NAMESPACE", "NAME", "TARGET", "ALGORITHM"],
            items
                .iter()
                .map(|r| {
                    vec![
                        s(&r["metadata"]["namespace"]),
                        s(&r["metadata"]["name"]),
                        s(&r["spec"]["targetRef"]["name"]),
                        s(&r["spec"]["loadBalancer"]["algorithm"]),
                    ]
                })
                .collect(),
        ),
        Kind::HttpRoute => table(
            &["NAMESPACE", "NAME", "PARENTS", "RULES"],
            items
                .iter()
                .map(|r| {
                    let parents = r["spec"]["parentRefs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| s(&p["name"]))
                        .collect::<Vec<_>>()
                        .join(",");
                    let rules = r["spec"]["rules"].as_array().map_or(0, Vec::len);
                    vec![
                        s(&r["metadata"]["namespace"]),
                        s(&r["metadata"]["name"]),
                        parents,
                        rules.to_string(),
                    ]
                })
                .collect(),
        ),
    }
}

fn proxies_table(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let types = p["types"].as_object();
            let synced = types
                .map(|t| {
                    t.values()
                        .filter_map(|x| x["syncedGeneration"].as_u64())
                        .min()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            let acked = types
                .map(|t| {
                    t.iter()
                        .map(|(k, x)| format!("{k}:{}", x["ackedVersion"].as_str().unwrap_or("-")))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let nacks = types
                .map(|t| {
                    t.iter()
                        .filter_map(|(k, x)| {
                            x["nack"]["message"].as_str().map(|m| format!("{k}: {m}"))
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            vec![
                s(&p["nodeId"]),
                s(&p["namespace"]),
                s(&p["address"]),
                s(&p["protocol"]),
                synced.to_string(),
                acked,
                if nacks.is_empty() { "-".into() } else { nacks },
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "NAMESPACE",
            "ADDRESS",
            "XDS",
            "SYNCED",
            "ACKED",
            "NACK",
        ],
        rows,
    )
}

fn history_table(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let changes = r["changes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{}/{} {}",
                        s(&c["key"]["kind"]).to_lowercase(),
                        s(&c["key"]["name"]),
                        s(&c["action"])
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![s(&r["revision"]), s(&r["timeUnixMs"]), changes]
        })
        .collect();
    table(&["REVISION", "TIME-UNIX-MS", "CHANGES"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A     LONGER\nxyz   1\n");
    }
}

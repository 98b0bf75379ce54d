//! The commands that print as things happen: `service logs` and `events`.
//! Each line is printed (and flushed) as it arrives, so they work in a pipe.

use std::io::Write;

use anyhow::{Context, Result};
use berth_proto::pb::cluster as pb;
use chrono::{DateTime, SecondsFormat};
use serde_json::json;
use tonic::Streaming;

use crate::output::Format;

/// Prints each task's lines as `TASK@NODE | TEXT`, to stdout or stderr as
/// the container wrote them; a node that could not be read is a warning
/// on stderr, and the exit is not a failure because of it.
pub async fn logs(mut stream: Streaming<pb::LogLines>, format: Format) -> Result<()> {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    while let Some(batch) = stream.message().await.context("the log stream broke")? {
        if !batch.warning.is_empty() {
            writeln!(err, "berthctl: warning: {}", batch.warning)?;
        }
        for l in batch.lines {
            let line = match format {
                Format::Json => {
                    json!({"task": l.task, "node": l.node, "stream": l.stream, "time": l.time, "text": l.text})
                        .to_string()
                }
                Format::Table => format!("{}@{} | {}", l.task, l.node, l.text),
            };
            if l.stream == "stderr" && format == Format::Table {
                writeln!(err, "{line}")?;
            } else {
                writeln!(out, "{line}")?;
            }
        }
        out.flush()?;
    }
    Ok(())
}

/// Prints each event as `TIME KIND ACTION NAME key=value,...`, or one JSON
/// object per line, until interrupted.
pub async fn events(mut stream: Streaming<pb::Event>, format: Format) -> Result<()> {
    let mut out = std::io::stdout().lock();
    while let Some(e) = stream.message().await.context("the event stream broke")? {
        writeln!(out, "{}", event_line(&e, format))?;
        out.flush()?;
    }
    Ok(())
}

fn event_line(e: &pb::Event, format: Format) -> String {
    let time = DateTime::from_timestamp_millis(e.time_unix_ms as i64)
        .map_or_else(|| e.time_unix_ms.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
    let mut attrs: Vec<(&String, &String)> = e.attributes.iter().collect();
    attrs.sort();
    match format {
        Format::Json => json!({
            "time": time, "kind": e.kind, "action": e.action, "name": e.name, "attributes": e.attributes,
        })
        .to_string(),
        Format::Table => {
            let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{time} {} {} {} {}", e.kind, e.action, e.name, attrs.join(",")).trim_end().to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line_each() {
        let e = pb::Event {
            time_unix_ms: 1_795_000_000_123,
            kind: "task".into(),
            action: "running".into(),
            name: "web.1.1".into(),
            attributes: [("node".to_owned(), "alpha".to_owned()), ("exit_code".to_owned(), "0".to_owned())].into(),
        };
        assert_eq!(
            event_line(&e, Format::Table),
            "2026-11-18T11:06:40.123Z task running web.1.1 exit_code=0,node=alpha"
        );
        let v: serde_json::Value = serde_json::from_str(&event_line(&e, Format::Json)).unwrap();
        assert_eq!((v["kind"].as_str(), v["attributes"]["node"].as_str()), (Some("task"), Some("alpha")));
    }
}

//! The soak run: one `memory-server` for minutes under a steady mix of writes, reads and
//! searches over hundreds of projects at random, with sessions subscribed to some of
//! them; its RSS, open files and threads sampled at a fixed interval. What it shows is
//! whether anything grows with time or with the projects touched (the lines should be
//! flat), whether any call fails, and whether every write to a subscribed project
//! reaches its subscriber.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::load::{self, Rng};
use crate::sys::{self, Proc, Res};
use crate::{Ctx, Rec};

pub struct SoakSettings {
    pub duration: Duration,
    pub sample_every: Duration,
    pub projects: usize,
    pub subscribed: usize,
    pub clients: usize,
}

impl SoakSettings {
    pub fn new(quick: bool, secs: Option<u64>) -> SoakSettings {
        if quick {
            SoakSettings {
                duration: Duration::from_secs(secs.unwrap_or(3)),
                sample_every: Duration::from_millis(250),
                projects: 50,
                subscribed: 5,
                clients: 8,
            }
        } else {
            SoakSettings {
                duration: Duration::from_secs(secs.unwrap_or(600)),
                sample_every: Duration::from_secs(10),
                projects: 500,
                subscribed: 20,
                clients: 8,
            }
        }
    }
}

/// Entities a project holds at most: writes create and delete names from a fixed set,
/// so the data stays the same size and what the samples show is the daemon, not a
/// growing graph.
const NAMES: usize = 200;

/// How long a write to a subscribed project waits for its notification.
const NOTICE_WAIT: Duration = Duration::from_secs(5);

/// Per subscribed project: notifications received so far.
type Notices = Rc<RefCell<HashMap<usize, u64>>>;

pub async fn run(ctx: &Ctx, rec: &mut Rec, set: &SoakSettings) -> Res<()> {
    let dir = ctx.scratch.join("soak");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    eprintln!("bench: soak: filling {} projects with {NAMES} entities each", set.projects);
    let projects: Vec<String> = (0..set.projects)
        .map(|i| {
            let p: PathBuf = dir.join(format!("p{i:04}"));
            std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
            if i >= set.subscribed {
                prefill(ctx, &home, &p, i)?;
            }
            Ok(p.to_string_lossy().into_owned())
        })
        .collect::<Res<_>>()?;
    let port = sys::free_port()?;
    let mut cmd = Command::new(&ctx.memory_server);
    cmd.arg("serve").arg("--port").arg(port.to_string()).env("HOME", &home).current_dir(&dir);
    let mut proc = Proc::spawn("soak", cmd, &dir.join("daemon.log"))?;
    let base = format!("http://127.0.0.1:{port}");
    sys::wait_http(&ctx.client, &format!("{base}/health"), Duration::from_secs(30), &mut proc).await?;
    let url = format!("{base}/mcp");
    eprintln!(
        "bench: soak for {} s: {} clients over {} projects, {} subscribed",
        set.duration.as_secs(),
        set.clients,
        set.projects,
        set.subscribed
    );

    let notices: Notices = Rc::new(RefCell::new(HashMap::new()));
    // The shared client gives up on a request after 120 s; these streams last the run.
    let streams_client = reqwest::Client::builder().no_proxy().build().map_err(|e| e.to_string())?;
    let mut streams = Vec::new();
    for (i, project) in projects.iter().enumerate().take(set.subscribed) {
        streams.push(subscribe(&streams_client, &url, project, i).await?);
        notices.borrow_mut().insert(i, 0);
    }
    // The streams are read beside the load, on this task; they end with it.
    let readers =
        futures_util::future::join_all(streams.into_iter().map(|(i, stream)| count_notices(stream, i, &notices)));
    let result = tokio::select! {
        r = soak(ctx, rec, set, &url, &base, &projects, &notices, proc.pid) => r,
        _ = readers => Err("a subscriber's stream ended early".to_owned()),
    };
    proc.stop().await;
    result
}

/// Gives a project the names the load draws from (`e0` … `e199`, one observation each)
/// before the run, with `memory-server import`, so the graphs start at the size the
/// load keeps them at and the samples show the daemon, not data growing.
fn prefill(ctx: &Ctx, home: &std::path::Path, project: &std::path::Path, p: usize) -> Res<()> {
    let lines: String = (0..NAMES)
        .map(|k| {
            let e = json!({"type": "entity", "name": format!("e{k}"), "entityType": "soak", "observations": [format!("note {k} of project {p}")]});
            format!("{e}\n")
        })
        .collect();
    crate::daemon::import_jsonl(ctx, home, project, &lines)
}

/// Counts the `notifications/resources/updated` events of a session's stream.
async fn count_notices(mut stream: reqwest::Response, index: usize, notices: &Notices) {
    let mut buf = String::new();
    while let Ok(Some(chunk)) = stream.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.contains("notifications/resources/updated") {
                *notices.borrow_mut().entry(index).or_default() += 1;
            }
        }
    }
}

/// A 2025-11-25 session subscribed to `project`'s graph: its `GET /mcp` stream.
async fn subscribe(
    client: &reqwest::Client,
    url: &str,
    project: &str,
    index: usize,
) -> Res<(usize, reqwest::Response)> {
    let post = |session: Option<&str>, body: Value| {
        let mut r = client
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("Mcp-Project-Path", project);
        if let Some(s) = session {
            r = r.header("Mcp-Session-Id", s).header("MCP-Protocol-Version", "2025-11-25");
        }
        r.body(body.to_string()).send()
    };
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"soak","version":"1"}}});
    let resp = post(None, init).await.map_err(|e| e.to_string())?;
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .ok_or("initialize gave no session")?
        .to_owned();
    post(Some(&session), json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await
        .map_err(|e| e.to_string())?;
    let stream = client
        .get(url)
        .header("Accept", "text/event-stream")
        .header("Mcp-Session-Id", &session)
        .header("MCP-Protocol-Version", "2025-11-25")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !stream.status().is_success() {
        return Err(format!("GET /mcp: {}", stream.status()));
    }
    let sub =
        json!({"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"memory://knowledge-graph"}});
    let answer =
        post(Some(&session), sub).await.map_err(|e| e.to_string())?.bytes().await.map_err(|e| e.to_string())?;
    let answer: Value = serde_json::from_slice(&answer).map_err(|e| format!("resources/subscribe: {e}"))?;
    if answer.get("result").is_none() {
        return Err(format!("resources/subscribe: {answer}"));
    }
    Ok((index, stream))
}

#[allow(clippy::too_many_arguments)]
async fn soak(
    ctx: &Ctx,
    rec: &mut Rec,
    set: &SoakSettings,
    url: &str,
    base: &str,
    projects: &[String],
    notices: &Notices,
    pid: u32,
) -> Res<()> {
    let start = Instant::now();
    let end = start + set.duration;
    let calls = Cell::new(0u64);
    let errors = Cell::new(0u64);
    let first_error: RefCell<Option<String>> = RefCell::new(None);
    let subscribed_writes = Cell::new(0u64);
    let missed = Cell::new(0u64);
    // Writes to a subscribed project go one at a time, each waiting for its notice, so
    // a missing notification cannot hide behind a neighbour's.
    let busy: RefCell<Vec<bool>> = RefCell::new(vec![false; set.subscribed]);
    // Per subscribed project: the names it holds (oldest first) and the last one made.
    let live: RefCell<Vec<(VecDeque<String>, u64)>> = RefCell::new(vec![(VecDeque::new(), 0); set.subscribed]);
    let fail = |e: String| {
        errors.set(errors.get() + 1);
        first_error.borrow_mut().get_or_insert(e);
    };

    let client = |c: usize| {
        let (fail, calls) = (&fail, &calls);
        let (busy, live, subscribed_writes, missed) = (&busy, &live, &subscribed_writes, &missed);
        async move {
            let mut rng = Rng::new(0x5eed + c as u64);
            let mut id = (c as u64) << 40;
            while Instant::now() < end {
                let p = rng.below(projects.len());
                let op = rng.below(10);
                id += 1;
                let watched = op <= 3 && p < set.subscribed;
                if watched {
                    if busy.borrow()[p] {
                        continue; // another client writes there now; pick again
                    }
                    busy.borrow_mut()[p] = true;
                }
                let k = rng.below(NAMES);
                let body = match op {
                    // A subscribed project's writes always change it (a new name, or the
                    // oldest one deleted), so each must be announced.
                    0..=3 if watched => {
                        let mut names = live.borrow_mut();
                        let (queue, next) = &mut names[p];
                        if queue.len() >= NAMES || (op == 3 && !queue.is_empty()) {
                            let name = queue.pop_front().unwrap_or_default();
                            call(id, "delete_entities", json!({"entityNames": [name]}))
                        } else {
                            *next += 1;
                            let name = format!("s{next}");
                            queue.push_back(name.clone());
                            let e = json!({"name": name, "entityType": "soak", "observations": [format!("note {next} of project {p}")]});
                            call(id, "create_entities", json!({"entities": [e]}))
                        }
                    }
                    0..=2 => {
                        let e = json!({"name": format!("e{k}"), "entityType": "soak", "observations": [format!("note {k} of project {p}")]});
                        call(id, "create_entities", json!({"entities": [e]}))
                    }
                    3 => call(id, "delete_entities", json!({"entityNames": [format!("e{k}")]})),
                    4..=7 => {
                        let names: Vec<String> = (0..3).map(|_| format!("e{}", rng.below(NAMES))).collect();
                        call(id, "open_nodes", json!({"names": names}))
                    }
                    _ => call(id, "search_nodes", json!({"query": format!("note {k} ")})),
                };
                let before = notices.borrow().get(&p).copied().unwrap_or(0);
                let answer = load::post(&ctx.client, url, &projects[p], body).await.and_then(|b| load::answer_ok(&b));
                calls.set(calls.get() + 1);
                if let Err(e) = answer {
                    fail(format!("project {p}: {e}"));
                }
                if watched {
                    subscribed_writes.set(subscribed_writes.get() + 1);
                    let waited = Instant::now();
                    while notices.borrow().get(&p).copied().unwrap_or(0) == before {
                        if waited.elapsed() > NOTICE_WAIT {
                            missed.set(missed.get() + 1);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    busy.borrow_mut()[p] = false;
                }
            }
        }
    };

    let sampler = async {
        let mut samples = Vec::new();
        let mut next = start;
        while next <= end {
            tokio::time::sleep_until(next.into()).await;
            let (rss, _) = sys::rss_kib(pid).unwrap_or((0, 0));
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
            let threads = threads(pid);
            let stores = match ctx.client.get(format!("{base}/health")).send().await {
                Ok(r) => r
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|h| h["open_stores"].as_u64())
                    .unwrap_or(0),
                Err(_) => 0,
            };
            let t = start.elapsed().as_secs_f64();
            eprintln!("bench: soak t={t:>5.0} s  rss {} KiB  files {fds}  threads {threads}  stores {stores}", rss);
            samples.push(json!({"kind": "soak_sample", "t_secs": t, "rss_kib": rss, "fds": fds, "threads": threads, "open_stores": stores}));
            next += set.sample_every;
        }
        samples
    };
    let (samples, ()) = tokio::join!(sampler, async {
        futures_util::future::join_all((0..set.clients).map(client)).await;
    });
    for s in samples {
        rec.push(s);
    }
    eprintln!(
        "bench: soak done: {} calls, {} errors, {} writes to subscribed projects, {} without a notification",
        calls.get(),
        errors.get(),
        subscribed_writes.get(),
        missed.get()
    );
    rec.push(json!({
        "kind": "soak", "secs": set.duration.as_secs_f64(), "projects": set.projects, "subscribed": set.subscribed,
        "clients": set.clients, "calls": calls.get(), "errors": errors.get(), "first_error": first_error.borrow().clone(),
        "subscribed_writes": subscribed_writes.get(), "missed_notifications": missed.get(),
        "sample_secs": set.sample_every.as_secs_f64(),
    }));
    Ok(())
}

fn call(id: u64, name: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
        .to_string()
}

fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// The soak section of RESULTS.md and its chart (`soak.svg`), when a soak ran.
pub fn report(lines: &[Value], quick: bool) -> Option<(String, String)> {
    use std::fmt::Write as _;
    let summary = lines.iter().find(|l| l["kind"] == "soak")?;
    let samples: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "soak_sample").collect();
    let secs = summary["secs"].as_f64().unwrap_or(0.0);
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    // The second tenth of the run against the last (for 10 minutes: minute 2 against minute 10).
    let window = secs / 10.0;
    let mean = |key: &str, from: f64, to: f64| {
        let v: Vec<f64> =
            samples.iter().filter(|s| (from..=to).contains(&num(s, "t_secs"))).map(|s| num(s, key)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut md = String::new();
    let _ = writeln!(md, "## Soak (issue 15)\n");
    let _ = writeln!(
        md,
        "`memory-server serve` (defaults) for {secs:.0} s: {} clients, each one call at a time, over {} projects at \
         random (30 % `create_entities`, 10 % `delete_entities`, 40 % `open_nodes`, 20 % `search_nodes`; \
         names drawn from a fixed set of {NAMES} per project, every project filled with them before the run, so \
         the data stays the same size), with a \
         2025-11-25 session subscribed to each of {} of them; every write to a subscribed project changes \
         it (a new name, or its oldest deleted) and waits (up to {} s) for its \
         `notifications/resources/updated` before that project is written again. RSS, \
         open files (`/proc/PID/fd`) and threads sampled every {} s. Flat means: the mean over the last tenth \
         of the run within 10 % of the mean over the second tenth.\n",
        summary["clients"],
        summary["projects"],
        summary["subscribed"],
        NOTICE_WAIT.as_secs(),
        summary["sample_secs"]
    );
    let _ = writeln!(md, "| calls | errors | writes to subscribed projects | of them without a notification |");
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| {} | {} | {} | {} |\n",
        summary["calls"], summary["errors"], summary["subscribed_writes"], summary["missed_notifications"]
    );
    if let Some(e) = summary["first_error"].as_str() {
        let _ = writeln!(md, "First error: `{e}`\n");
    }
    let _ = writeln!(md, "| measure | second tenth | last tenth | change | flat |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (key, label) in [("rss_kib", "RSS (KiB)"), ("fds", "open files"), ("threads", "threads")] {
        let (early, late) = (mean(key, window, 2.0 * window), mean(key, secs - window, secs));
        let (change, flat) = match (early, late) {
            (Some(e), Some(l)) if e > 0.0 => {
                let c = (l - e) / e;
                (
                    format!("{:+.1} %", c * 100.0),
                    if quick {
                        "not judged (quick)"
                    } else if c.abs() <= 0.10 {
                        "**yes**"
                    } else {
                        "**no**"
                    },
                )
            }
            _ => ("–".into(), "no data"),
        };
        let fmt = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
        let _ = writeln!(md, "| {label} | {} | {} | {change} | {flat} |", fmt(early), fmt(late));
    }
    let _ = writeln!(md, "\n![RSS, open files and threads over the soak](soak.svg)\n");
    Some((md, chart(&samples, secs)))
}

/// Three stacked line charts over time: RSS (MiB), open files, threads.
fn chart(samples: &[&Value], secs: f64) -> String {
    use std::fmt::Write as _;
    let (left, width, panel, gap, top) = (70.0, 640.0, 120.0, 40.0, 30.0);
    let panels: [(&str, &str, f64); 3] =
        [("rss_kib", "RSS (MiB)", 1024.0), ("fds", "open files", 1.0), ("threads", "threads", 1.0)];
    let height = top + panels.len() as f64 * (panel + gap) + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        left + width + 30.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="18" font-size="14" font-weight="bold">memory-server over the soak run (x: seconds)</text>"#
    );
    let x = |t: f64| left + t / secs.max(1e-9) * width;
    for (i, (key, label, scale)) in panels.iter().enumerate() {
        let y0 = top + i as f64 * (panel + gap);
        let values: Vec<(f64, f64)> = samples
            .iter()
            .map(|v| (v["t_secs"].as_f64().unwrap_or(0.0), v[*key].as_f64().unwrap_or(0.0) / scale))
            .collect();
        let max = values.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1.0) * 1.2;
        let y = |v: f64| y0 + panel - v / max * panel;
        let _ =
            writeln!(s, r##"<rect x="{left}" y="{y0}" width="{width}" height="{panel}" fill="none" stroke="#ccc"/>"##);
        let _ = writeln!(s, r#"<text x="{left}" y="{:.1}">{label}</text>"#, y0 - 5.0);
        for frac in [0.0, 0.5, 1.0] {
            let v = max * frac;
            let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text>"#, left - 6.0, y(v) + 4.0);
        }
        let points: Vec<String> = values.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        let _ =
            writeln!(s, r##"<polyline fill="none" stroke="#4f6d7a" stroke-width="2" points="{}"/>"##, points.join(" "));
    }
    let bottom = top + panels.len() as f64 * (panel + gap) - gap + 15.0;
    for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let t = secs * frac;
        let _ = writeln!(s, r#"<text x="{:.1}" y="{bottom:.1}" text-anchor="middle">{t:.0}</text>"#, x(t));
    }
    s.push_str("</svg>\n");
    s
}

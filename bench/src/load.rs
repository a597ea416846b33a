//! The load generator: the generated graph, the request bodies, C clients posting
//! statelessly over keep-alive connections for a fixed time, and the statistics.

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Upper bound of requests one client records in one measurement.
const MAX_REQUESTS_PER_CLIENT: usize = 2_000_000;

pub fn entity_name(i: usize) -> String {
    format!("entity-{i:06}")
}

/// Search term that matches exactly the ten entities `10g .. 10g+9`.
pub fn group_tag(g: usize) -> String {
    format!("<g{g:06}>")
}

pub fn entity(i: usize) -> Value {
    json!({
        "name": entity_name(i),
        "entityType": format!("type-{}", i % 20),
        "observations": [
            format!("Observation about entity {i}, written in ordinary words for the benchmark"),
            format!("lives in city {} and works on project {}", i % 97, i % 89),
            format!("member of group {}", group_tag(i / 10)),
        ],
    })
}

/// Relation `i`: entity i knows entity (7i+1) mod n; n distinct relations.
pub fn relation(i: usize, n: usize) -> Value {
    json!({ "from": entity_name(i), "to": entity_name((i * 7 + 1) % n), "relationType": "knows" })
}

/// The graph of `n` entities as the official JSONL (for `memory-server import`).
pub fn graph_jsonl(n: usize) -> String {
    let mut out = String::with_capacity(n * 300);
    for i in 0..n {
        let mut e = entity(i);
        e.as_object_mut().map(|o| o.insert("type".into(), "entity".into()));
        out.push_str(&e.to_string());
        out.push('\n');
    }
    for i in 0..n {
        let mut r = relation(i, n);
        r.as_object_mut().map(|o| o.insert("type".into(), "relation".into()));
        out.push_str(&r.to_string());
        out.push('\n');
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    OpenNodes,
    SearchNodes,
    ReadGraph,
    CreateEntities,
    AddObservations,
    Ping,
}

impl Kind {
    pub fn writes(self) -> bool {
        matches!(self, Kind::CreateEntities | Kind::AddObservations)
    }
}

/// Small deterministic generator (xorshift64*), one per client.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// What one request of a workload sends.
pub struct Gen<'a> {
    pub kind: Kind,
    /// Entities in the target graph.
    pub n: usize,
    /// Tag of created names, unique per system and run.
    pub tag: &'a str,
    pub counter: &'a Cell<u64>,
}

impl Gen<'_> {
    pub fn body(&self, id: u64, rng: &mut Rng) -> String {
        let call = |name: &str, args: Value| {
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}})
                .to_string()
        };
        let next = || {
            let c = self.counter.get();
            self.counter.set(c + 1);
            c
        };
        match self.kind {
            Kind::OpenNodes => {
                let names: Vec<String> = (0..5).map(|_| entity_name(rng.below(self.n))).collect();
                call("open_nodes", json!({ "names": names }))
            }
            Kind::SearchNodes => call("search_nodes", json!({ "query": group_tag(rng.below(self.n / 10)) })),
            Kind::ReadGraph => call("read_graph", json!({})),
            Kind::CreateEntities => {
                let name = format!("new-{}-{}", self.tag, next());
                call(
                    "create_entities",
                    json!({"entities": [{"name": name, "entityType": "bench", "observations": ["created by the benchmark"]}]}),
                )
            }
            Kind::AddObservations => {
                let content = format!("added by the benchmark {}-{}", self.tag, next());
                call(
                    "add_observations",
                    json!({"observations": [{"entityName": entity_name(rng.below(self.n)), "contents": [content]}]}),
                )
            }
            Kind::Ping => json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string(),
        }
    }
}

/// One stateless POST; the answer body or a description of what went wrong.
pub async fn post(client: &reqwest::Client, url: &str, project: &str, body: String) -> Result<Vec<u8>, String> {
    let r = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Project-Path", project)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)])));
    }
    Ok(bytes.to_vec())
}

/// Whether an answer is a successful result (no JSON-RPC error, no `isError`).
pub fn answer_ok(body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("error").is_some() || v["result"]["isError"] == json!(true) || v.get("result").is_none() {
        return Err(String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub struct LoadResult {
    pub requests: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub secs: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub answer_bytes: usize,
}

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1e6
}

/// `clients` concurrent clients, each one request at a time, for `warmup` (discarded)
/// then `duration`; every answer's status is checked, small answers fully. Client `c`
/// sends to `urls[c % urls.len()]` (several daemons serving one database share the load
/// round-robin; no URL, no requests).
pub async fn run(
    client: &reqwest::Client,
    urls: &[&str],
    project: &str,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    gen_: &Gen<'_>,
) -> LoadResult {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let one = |c: usize| async move {
        let url = urls.get(c % urls.len().max(1)).copied();
        let mut rng = Rng::new(c as u64 + 1 + gen_.counter.get());
        let mut lat: Vec<u64> = Vec::with_capacity(4096);
        let mut errors = 0usize;
        let mut first_error = None;
        let mut last_done = measure_from;
        let mut bytes = 0usize;
        let mut id = (c as u64) << 40;
        let mut checked = false;
        while let Some(url) = url {
            let t0 = Instant::now();
            if t0 >= end || lat.len() >= MAX_REQUESTS_PER_CLIENT {
                break;
            }
            id += 1;
            let r = post(client, url, project, gen_.body(id, &mut rng)).await;
            let t1 = Instant::now();
            let verdict = match r {
                Ok(b) => {
                    bytes = b.len();
                    if b.len() < 4096 || !checked {
                        checked = true;
                        answer_ok(&b)
                    } else if contains(&b[..64.min(b.len())], b"\"error\"") {
                        Err("error answer".into())
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            };
            if t0 >= measure_from {
                lat.push((t1 - t0).as_nanos() as u64);
                last_done = t1;
                if let Err(e) = verdict {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            } else if let Err(e) = verdict {
                errors += 1;
                first_error.get_or_insert(e);
                // A failing warm-up should not spin: wait a little.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        (lat, errors, first_error, last_done, bytes)
    };
    let results = futures_util::future::join_all((0..clients).map(one)).await;
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut last = measure_from;
    let mut answer_bytes = 0;
    for (lat, e, fe, ld, b) in results {
        all.extend(lat);
        errors += e;
        if first_error.is_none() {
            first_error = fe;
        }
        last = last.max(ld);
        answer_bytes = answer_bytes.max(b);
    }
    all.sort_unstable();
    let secs = (last - measure_from).as_secs_f64().max(1e-9);
    LoadResult {
        requests: all.len(),
        errors,
        first_error,
        secs,
        rps: all.len() as f64 / secs,
        p50_ms: percentile(&all, 50.0),
        p90_ms: percentile(&all, 90.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: percentile(&all, 100.0),
        answer_bytes,
    }
}

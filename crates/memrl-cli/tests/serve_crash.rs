//! `memrl serve` killed with SIGKILL at random moments under a mixed load of adds and feedback
//! (4 clients over 2 namespaces, each through its own connection), 50 times by default
//! (`MEMRL_SERVE_KILLS` to change it); one kill in five lands while the server is still opening
//! its namespaces. After every restart: every acknowledged add (HTTP 200 received) is there,
//! every memory's Q and visits equal what its acknowledged feedback implies (plus, at most, the
//! one request in flight when the server died), and every namespace opens and answers.

mod server;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memrl::internal::SplitMix64;
use serde_json::json;
use server::{Http, Server};

const CLIENTS: u64 = 4;
const NAMESPACES: [&str; 2] = ["n0", "n1"];
const DIM: usize = 8;
const MAX_MEMORIES_PER_CLIENT: usize = 40;
const ALPHA: f32 = 0.3;

fn server_args() -> Vec<&'static str> {
    vec!["--no-model", "--dim", "8", "--model-id", "crash-test"]
}

/// What one client knows: acknowledged state, and the request that was in flight.
#[derive(Default)]
struct Client {
    /// id -> (Q, visits) as acknowledged.
    acked: HashMap<u64, (f32, u64)>,
    next_id: u64,
    in_flight: Option<Op>,
    acknowledged: u64,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Add(u64),
    Feedback(u64, f32),
}

impl Client {
    fn namespace(t: u64) -> &'static str {
        NAMESPACES[(t % 2) as usize]
    }

    /// Sends operations until the server dies.
    fn run(&mut self, t: u64, addr: &str, rng: &mut SplitMix64) {
        let mut http = Http::connect(addr);
        let ns = Self::namespace(t);
        loop {
            let op = if self.acked.is_empty()
                || (self.acked.len() < MAX_MEMORIES_PER_CLIENT && rng.next_f64() < 0.3)
            {
                let id = t * 1_000_000 + self.next_id;
                self.next_id += 1;
                Op::Add(id)
            } else {
                let ids: Vec<u64> = self.acked.keys().copied().collect();
                let id = ids[(rng.next_u64() % ids.len() as u64) as usize];
                Op::Feedback(id, if rng.next_f64() < 0.5 { 1.0 } else { -1.0 })
            };
            self.in_flight = Some(op);
            let (path, body) = match op {
                Op::Add(id) => (
                    format!("/v1/namespaces/{ns}/memories"),
                    json!({"id": id, "intent": format!("task {id}"), "experience": format!("lesson {id}"),
                           "embedding": rng.unit_vector(DIM)}),
                ),
                Op::Feedback(id, reward) => (
                    format!("/v1/namespaces/{ns}/feedback"),
                    json!({"memory_ids": [id], "reward": reward}),
                ),
            };
            let body = serde_json::to_vec(&body).unwrap();
            let Ok(response) = http.send(
                "POST",
                &path,
                &[("content-type", "application/json")],
                Some(&body),
            ) else {
                return; // the server died; `in_flight` may or may not have been applied
            };
            assert_eq!(
                response.status,
                200,
                "{op:?}: {}",
                String::from_utf8_lossy(&response.body)
            );
            match op {
                Op::Add(id) => {
                    self.acked.insert(id, (0.0, 0));
                }
                Op::Feedback(id, reward) => {
                    let (q, visits) = self.acked.get_mut(&id).unwrap();
                    *q = memrl::update_q(*q, reward, ALPHA);
                    *visits += 1;
                }
            }
            self.in_flight = None;
            self.acknowledged += 1;
        }
    }

    /// Checks the restarted server against what was acknowledged, and adopts the in-flight
    /// request's outcome.
    fn verify(&mut self, t: u64, http: &mut Http, round: usize) {
        let ns = Self::namespace(t);
        let in_flight = self.in_flight.take();
        if let Some(Op::Add(id)) = in_flight {
            let r = http.call(
                "GET",
                &format!("/v1/namespaces/{ns}/memories/{id}"),
                None,
                None,
            );
            match r.status {
                200 => {
                    self.acked.insert(id, (0.0, 0));
                }
                404 => {}
                s => panic!("round {round}: GET memory {id}: {s}"),
            }
        }
        for (&id, (q, visits)) in self.acked.iter_mut() {
            let r = http.call(
                "GET",
                &format!("/v1/namespaces/{ns}/memories/{id}"),
                None,
                None,
            );
            assert_eq!(
                r.status,
                200,
                "round {round}: acknowledged memory {id} of client {t} is missing: {}",
                String::from_utf8_lossy(&r.body)
            );
            let m = r.json();
            let got_visits = m["visits"].as_u64().unwrap();
            let got_q = m["q"].as_f64().unwrap() as f32;
            match in_flight {
                Some(Op::Feedback(fid, reward)) if fid == id && got_visits == *visits + 1 => {
                    // The request in flight was applied before the kill.
                    *q = memrl::update_q(*q, reward, ALPHA);
                    *visits += 1;
                }
                _ => {}
            }
            assert_eq!(
                (got_q, got_visits),
                (*q, *visits),
                "round {round}: memory {id} of client {t}: Q and visits are not what its acknowledged feedback implies"
            );
        }
    }
}

fn kills() -> usize {
    std::env::var("MEMRL_SERVE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[test]
fn a_server_killed_50_times_loses_no_acknowledged_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::default()).collect();
    let mut rng = SplitMix64::new(0xC4A5);
    let started = Instant::now();
    let rounds = kills();
    let mut during_startup = 0;
    for round in 0..rounds {
        if round % 5 == 4 {
            // Kill while the server opens its namespaces (replaying their logs).
            let mut child = Command::new(env!("CARGO_BIN_EXE_memrl"))
                .arg("serve")
                .arg("--data")
                .arg(&data)
                .args(["--listen", "127.0.0.1:0"])
                .args(server_args())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.next_u64() % 40));
            let _ = child.kill();
            let _ = child.wait();
            during_startup += 1;
            continue;
        }
        let server = Server::start(&data, &server_args(), &[]);
        let mut http = server.http();
        for ns in NAMESPACES {
            let r = http.call("GET", &format!("/v1/namespaces/{ns}/stats"), None, None);
            assert!(
                r.status == 200 || (round == 0 && r.status == 404),
                "round {round}: namespace {ns} is unreadable: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        for (t, client) in clients.iter_mut().enumerate() {
            client.verify(t as u64, &mut http, round);
        }
        drop(http);
        let load_ms = 20 + rng.next_u64() % 300;
        let addr = server.addr.clone();
        let seeds: Vec<u64> = (0..CLIENTS).map(|_| rng.next_u64()).collect();
        std::thread::scope(|s| {
            for (t, (client, seed)) in clients.iter_mut().zip(&seeds).enumerate() {
                let addr = addr.clone();
                s.spawn(move || client.run(t as u64, &addr, &mut SplitMix64::new(*seed)));
            }
            std::thread::sleep(Duration::from_millis(load_ms));
            server.kill();
        });
    }
    // A last restart checks the last round's kill.
    let server = Server::start(&data, &server_args(), &[]);
    let mut http = server.http();
    for (t, client) in clients.iter_mut().enumerate() {
        client.verify(t as u64, &mut http, rounds);
    }
    let acknowledged: u64 = clients.iter().map(|c| c.acknowledged).sum();
    let memories: usize = clients.iter().map(|c| c.acked.len()).sum();
    assert!(acknowledged > 0);
    println!(
        "{rounds} SIGKILLs ({during_startup} during startup), {acknowledged} acknowledged requests, {memories} memories checked after every restart, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

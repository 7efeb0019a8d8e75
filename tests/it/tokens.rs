//! Writes to `aurum serve` need a token (issue #20, item 4): every state-changing endpoint
//! answers 401 without one and 403 with a wrong, revoked or other node's one, and changes
//! nothing; `aurum token` makes, lists and revokes them; a node reports with its own.

use std::fs;

use crate::common::{json, Env};
use crate::serve::{http, Server};

/// The write endpoints the server routes: every `(Method::Post, [...])` arm of
/// src/serve/mod.rs but the read-only delta and locate APIs, so that a new one is walked here
/// too.
fn routed_writes() -> Vec<String> {
    let src = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/serve/mod.rs")).unwrap();
    let mut found: Vec<String> = src
        .split("(Method::Post, [")
        .skip(1)
        .filter_map(|rest| rest.split_once(']').map(|(parts, _)| parts.to_string()))
        .filter(|parts| parts != "\"deltas\"" && parts != "\"locate\"")
        .collect();
    found.sort();
    found
}

fn nodes(env: &Env) -> serde_json::Value {
    json(&env.ok(&["nodes", "--json"]))
}

#[test]
fn every_write_endpoint_refuses_a_missing_or_wrong_token() {
    let env = Env::new();
    let golden = env.path("golden");
    fs::create_dir_all(&golden).unwrap();
    fs::write(golden.join("motd"), "hi\n").unwrap();
    env.getimage(&golden, "img", &[]);
    env.ok(&[
        "node",
        "add",
        "n01",
        "--mac",
        "52:54:00:00:20:01",
        "--image",
        "img",
    ]);
    let srv = Server::start(&env);
    let admin = env.admin_token();
    let n01 = env.ok(&["token", "node", "n01"]).trim().to_string();
    let n02 = env.ok(&["token", "node", "n02"]).trim().to_string();
    let spare = json(&env.ok(&["token", "create", "n01-spare", "--node", "n01", "--json"]));
    let spare = spare["token"].as_str().unwrap().to_string();
    let gone = json(&env.ok(&["token", "create", "gone", "--json"]))["token"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["token", "revoke", "gone"]);

    let report =
        r#"{"hostname":"n01","action":"updateclient","result":"ok","bytes":1,"seconds":0.1}"#;
    let phase = r#"{"phase":"transfer","detail":"1 of 2 bytes"}"#;
    // (routed pattern, path, body), one per write endpoint.
    let writes = [
        (r#""install", node"#, "/api/v1/install/n01", phase),
        (r#""reports""#, "/api/v1/reports", report),
    ];
    let mut walked: Vec<String> = writes.iter().map(|w| w.0.to_string()).collect();
    walked.sort();
    assert_eq!(
        walked,
        routed_writes(),
        "a write endpoint this test does not walk"
    );

    let state = |env: &Env| (nodes(env), env.ok(&["node", "show", "n01"]));
    let before = state(&env);
    // A write to `path` with `token`: (status, headers, body).
    let post_as = |token: &str, path: &str, body: &str| {
        let auth = format!("Bearer {token}");
        http(
            &srv.addr,
            "POST",
            path,
            &[("Authorization", &auth)],
            body.as_bytes(),
        )
    };
    for (_, path, body) in writes {
        let (st, head, text) = http(&srv.addr, "POST", path, &[], body.as_bytes());
        assert_eq!(st, 401, "{path}: {}", String::from_utf8_lossy(&text));
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(String::from_utf8_lossy(&text).contains("Authorization: Bearer"));
        for (who, token) in [
            ("garbage", "aurum_tok_0000"),
            ("another node's", n02.as_str()),
            ("a revoked", gone.as_str()),
        ] {
            let (st, _, text) = post_as(token, path, body);
            assert_eq!(
                st,
                403,
                "{path} with {who} token: {}",
                String::from_utf8_lossy(&text)
            );
        }
        assert_eq!(state(&env), before, "{path}: a refused write changed state");
    }
    // The node's own token (derived or made for it) and an admin token are taken.
    for token in [&n01, &spare, &admin] {
        for (_, path, body) in writes {
            let (st, _, text) = post_as(token, path, body);
            assert_eq!(st, 204, "{path}: {}", String::from_utf8_lossy(&text));
        }
    }
    assert_eq!(nodes(&env)[0]["hostname"], "n01");
    // Revoking n01's derived token refuses it from now on; its next one works.
    env.ok(&["token", "revoke", "--node", "n01"]);
    assert_eq!(post_as(&n01, "/api/v1/reports", report).0, 403);
    let next = env.ok(&["token", "node", "n01"]).trim().to_string();
    assert_ne!(next, n01);
    assert_eq!(post_as(&next, "/api/v1/reports", report).0, 204);
    // Reads stay open, and so does the delta API (it changes nothing).
    assert_eq!(http(&srv.addr, "GET", "/api/v1/nodes", &[], b"").0, 200);
    assert_ne!(http(&srv.addr, "POST", "/api/v1/deltas", &[], b"").0, 401);
    // The boot script hands the installer its node's current token.
    let (st, _, script) = http(&srv.addr, "GET", "/boot/52:54:00:00:20:01.ipxe", &[], b"");
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&script).contains(&format!("aurum.token={next}")));
}

#[test]
fn open_writes_take_reports_without_a_token() {
    let env = Env::new();
    let srv = Server::start_with(&env, &["--open-writes"]);
    let report =
        r#"{"hostname":"lab1","action":"updateclient","result":"ok","bytes":1,"seconds":0.1}"#;
    assert_eq!(
        http(&srv.addr, "POST", "/api/v1/reports", &[], report.as_bytes()).0,
        204
    );
    assert_eq!(nodes(&env)[0]["hostname"], "lab1");
}

#[test]
fn token_commands_create_list_and_revoke() {
    let env = Env::new();
    let made = json(&env.ok(&["token", "create", "ops", "--json"]));
    let token = made["token"].as_str().unwrap();
    assert!(
        token.starts_with("aurum_tok_") && token.len() == 74,
        "{made}"
    );
    // Only the hash is kept: the token's text is nowhere in the catalog.
    let db = fs::read(env.repo().join("aurum.db")).unwrap();
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
    env.ok(&["token", "create", "n07", "--node", "n07"]);
    let out = env.run(&["token", "create", "ops"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a token `ops`"));
    let list = json(&env.ok(&["token", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let named = |list: &serde_json::Value, name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap()
    };
    assert!(named(&list, "ops")["node"].is_null() && named(&list, "n07")["node"] == "n07");
    env.ok(&["token", "revoke", "ops", "--json"]);
    let list = json(&env.ok(&["token", "list", "--json"]));
    assert!(named(&list, "ops")["revoked"].is_i64() && named(&list, "n07")["revoked"].is_null());
    let table = env.ok(&["token", "list"]);
    assert!(
        table.contains("admin") && table.contains("node n07"),
        "{table}"
    );
    let out = env.run(&["token", "revoke", "nope"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token `nope`"));
    let a = env.ok(&["token", "node", "n07"]);
    assert_eq!(a, env.ok(&["token", "node", "n07"]));
    assert!(a.starts_with("aurum_node_"));
}

#[test]
fn a_node_reports_with_its_own_token_and_not_with_another() {
    let env = Env::new();
    let src = env.path("golden");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/motd"), "hi\n").unwrap();
    env.getimage(&src, "img", &[]);
    let srv = Server::start(&env);
    let node = env.empty_dir("node");
    let update = |env: &Env| {
        let mut c = env.updateclient(&srv.url, "img", &node, &["--no-default-excludes"]);
        // The node's own token only, not the administrator's.
        c.env_remove("AURUM_TOKEN");
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Another node's token: the update works, its report is refused and says why.
    let dir = node.join("var/lib/aurum-node");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("token"),
        env.ok(&["token", "node", "not-this-host"]),
    )
    .unwrap();
    update(&env);
    assert!(nodes(&env).as_array().unwrap().is_empty());
    env.give_node_token(&node);
    update(&env);
    assert_eq!(nodes(&env)[0]["action"], "updateclient");
}

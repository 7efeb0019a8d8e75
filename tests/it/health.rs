//! `aurum health`: the checks an image carries run on the node (chrooted into a node root),
//! required failures make it unhealthy, wanted ones are only reported, a check past its limit is
//! killed with its children, and the result lands in the node's state.

use std::path::Path;

use crate::common::{can_run, is_root, json, sh, Env};

const BUSYBOX: &str = "/bin/busybox";

/// A busybox root whose image carries health checks: sshd-like "service" check required, a
/// disk-space check wanted.
fn golden_with_checks(env: &Env, required_ok: bool) -> std::path::PathBuf {
    let root = env.path(if required_ok {
        "golden-ok"
    } else {
        "golden-bad"
    });
    let status = if required_ok { "running" } else { "stopped" };
    sh(&format!(
        r#"
        r={root}
        mkdir -p $r/bin $r/etc/aurum/health/required.d $r/etc/aurum/health/wanted.d $r/tmp
        cp {BUSYBOX} $r/bin/busybox
        for t in $({BUSYBOX} --list); do [ $t = busybox ] || ln -sf busybox $r/bin/$t; done
        echo {status} > $r/etc/service.state
        cat > $r/etc/aurum/health/required.d/10-service <<'EOF'
#!/bin/sh
state=$(cat /etc/service.state)
echo "service is $state"
[ "$state" = running ]
EOF
        cat > $r/etc/aurum/health/wanted.d/50-scratch-space <<'EOF'
#!/bin/sh
echo "scratch is nearly full" >&2
exit 1
EOF
        cat > $r/etc/aurum/health/wanted.d/README.txt <<'EOF'
not a check: run-parts names only
EOF
        chmod 755 $r/etc/aurum/health/*/*
        "#,
        root = root.display()
    ));
    root
}

#[test]
fn health_checks_from_the_image_decide_and_are_recorded() {
    if !can_run(is_root(), "root (checks run chrooted into the node root)")
        || !can_run(Path::new(BUSYBOX).exists(), "busybox-static")
    {
        return;
    }
    let env = Env::new();
    let good = golden_with_checks(&env, true);
    env.getimage(&good, "compute", &[]);
    let node = env.path("node");
    std::fs::create_dir_all(&node).unwrap();
    let root = node.to_str().unwrap();
    env.ok(&["updateclient", "--image", "compute", "--root", root]);

    let out = env.ok(&["health", "--root", root, "--json"]);
    let v = json(&out);
    assert_eq!(v["recorded"], true);
    assert_eq!(v["health"]["healthy"], true, "{out}");
    let checks = v["health"]["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["10-service", "50-scratch-space"]);
    assert_eq!(checks[0]["status"], "pass");
    assert_eq!(checks[0]["output"], "service is running\n");
    assert_eq!(checks[1]["status"], "fail");
    assert_eq!(checks[1]["required"], false);
    assert_eq!(v["health"]["revision"]["number"], 1);
    let status = env.ok(&["node-status", "--root", root]);
    assert!(status.contains("health           healthy at"), "{status}");

    // The next revision breaks the required check: the node is unhealthy, exit 1, and the
    // text output shows what the check said.
    let bad = golden_with_checks(&env, false);
    env.getimage(&bad, "compute", &[]);
    env.ok(&["updateclient", "--image", "compute", "--root", root]);
    let out = env.run(&["health", "--root", root]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL     required  10-service"), "{text}");
    assert!(text.contains("| service is stopped"), "{text}");
    assert!(text.trim_end().ends_with("UNHEALTHY"), "{text}");
    let state = json(&env.ok(&["node-status", "--root", root, "--json"]));
    assert_eq!(state["state"]["health"]["healthy"], false);
    assert_eq!(state["state"]["health"]["revision"]["number"], 2);

    // A check that hangs (and leaves a child behind) is killed at the limit and fails.
    let hang = node.join("etc/aurum/health/required.d/20-hang");
    std::fs::write(&hang, "#!/bin/sh\nsleep 60 &\nsleep 60\n").unwrap();
    sh(&format!("chmod 755 '{}'", hang.display()));
    let started = std::time::Instant::now();
    let out = env.run(&["health", "--root", root, "--timeout", "1", "--json"]);
    assert!(
        started.elapsed().as_secs() < 10,
        "the hanging check was not cut short"
    );
    assert_eq!(out.status.code(), Some(1));
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let hang = &v["health"]["checks"].as_array().unwrap()[1];
    assert_eq!(hang["name"], "20-hang");
    assert_eq!(hang["status"], "timeout");
    assert!(
        !sh("ps -eo args").lines().any(|l| l.trim() == "sleep 60"),
        "a child of the check outlived it"
    );
}

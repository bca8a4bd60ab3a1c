//! `blox server`'s security as an operator meets it, through the real binary: the loopback rule (no
//! token file, no exposure), a token file, and HTTPS with a self-signed certificate, used by the CLI
//! with --ca-cert and --token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use blox_api::InstanceQuery;
use blox_client::{Client, ClientError, ClientOptions};
use blox_testkit::{BloxProcess, Finished, run_to_end, wait_until};

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const DEADLINE: Duration = Duration::from_secs(30);
const READ: &str = "read-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";
/// Variables of the blox binary that would change what these tests ask for.
const BLOX_ENV: &[&str] = &[
    "BLOX_TOKEN",
    "BLOX_ENDPOINT",
    "BLOX_CA_CERT",
    "BLOX_AUTH_TOKEN_FILE",
    "BLOX_INSECURE_NO_AUTH",
    "BLOX_TLS_CERT",
    "BLOX_TLS_KEY",
    "BLOX_LISTEN",
];

/// A token file and a self-signed certificate for 127.0.0.1 and localhost.
struct Secrets {
    _dir: tempfile::TempDir,
    tokens: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn secrets() -> Secrets {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# blox's tokens\nread {READ}\n\nadmin {ADMIN}\n"),
    )
    .unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("a self-signed certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    Secrets {
        _dir: dir,
        tokens,
        cert,
        key,
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Runs blox to its end with `env` (and none of [`BLOX_ENV`] but those given).
async fn run(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut command = tokio::process::Command::new(BLOX);
    for name in BLOX_ENV {
        command.env_remove(name);
    }
    command.args(args).envs(env.iter().copied());
    run_to_end(command, DEADLINE).await
}

const SIM: &[&str] = &[
    "--store",
    "memory",
    "--ecs",
    "sim",
    "--sim-scenario",
    "demo",
    "--sim-churn",
    "none",
];

fn server_args<'a>(listen: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["server", "--listen", listen];
    args.extend_from_slice(SIM);
    args.extend_from_slice(extra);
    args
}

/// `http://127.0.0.1:PORT` of a server that printed `http://0.0.0.0:PORT`.
fn on_loopback(blox: &BloxProcess) -> String {
    let port = blox.base_url().rsplit(':').next().expect("a port");
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_server_beyond_loopback_needs_a_token_file_or_insecure_no_auth() {
    let secrets = secrets();

    // Refused before it serves, with a message that names the way out.
    let refused = run(&server_args("0.0.0.0:0", &[]), &[]).await;
    assert_eq!(refused.code, Some(1), "{}\n{}", refused.stdout, refused.stderr);
    for says in [
        "refusing to serve without authentication on 0.0.0.0:0",
        "is not a loopback address",
        "--auth-token-file PATH",
        "--insecure-no-auth",
    ] {
        assert!(refused.stderr.contains(says), "{says:?} in:\n{}", refused.stderr);
    }
    assert!(
        !refused.stdout.contains(blox_api::LISTENING_PREFIX),
        "{}",
        refused.stdout
    );
    // `blox up` too; on loopback it needs nothing (tests/up.rs).
    let data = tempfile::tempdir().unwrap();
    let up = run(
        &["up", "--listen", "0.0.0.0:0", "--data-dir", path(data.path())],
        &[],
    )
    .await;
    assert_eq!(up.code, Some(1), "{}", up.stderr);
    assert!(
        up.stderr.contains("refusing to serve without authentication"),
        "{}",
        up.stderr
    );

    // --insecure-no-auth: served, to anyone.
    let blox = BloxProcess::start(BLOX, server_args("0.0.0.0:0", &["--insecure-no-auth"]), &[])
        .await
        .expect("blox serves with --insecure-no-auth");
    assert!(
        blox.base_url().starts_with("http://0.0.0.0:"),
        "{}",
        blox.base_url()
    );
    let client = Client::new(on_loopback(&blox));
    client
        .list_instances(&InstanceQuery::default())
        .await
        .expect("no token needed");
    drop(blox);

    // A token file: served, to holders of a token only.
    let tokens = path(&secrets.tokens);
    let blox = BloxProcess::start(
        BLOX,
        server_args("0.0.0.0:0", &["--auth-token-file", tokens]),
        &[],
    )
    .await
    .expect("blox serves with a token file");
    let url = on_loopback(&blox);
    let refused = Client::new(&url).list_instances(&InstanceQuery::default()).await;
    assert!(
        matches!(&refused, Err(ClientError::Api { status: 401, body }) if body.code == "Unauthorized"),
        "{refused:?}"
    );
    let reader = Client::with_options(
        &url,
        &ClientOptions {
            token: Some(READ.into()),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    reader
        .list_instances(&InstanceQuery::default())
        .await
        .expect("a read token reads");
    // Probes need no token.
    Client::new(&url).readiness().await.expect("/readyz is open");
}

#[tokio::test]
async fn bad_security_flags_stop_the_server_before_it_starts() {
    let secrets = secrets();
    let (cert, tokens) = (path(&secrets.cert), path(&secrets.tokens));

    let half = run(&server_args("127.0.0.1:0", &["--tls-cert", cert]), &[]).await;
    assert_eq!(half.code, Some(2), "{}", half.stderr);
    assert!(half.stderr.contains("--tls-key"), "{}", half.stderr);

    let both = run(
        &server_args(
            "127.0.0.1:0",
            &["--auth-token-file", tokens, "--insecure-no-auth"],
        ),
        &[],
    )
    .await;
    assert_eq!(both.code, Some(2), "{}", both.stderr);
    assert!(both.stderr.contains("cannot be used with"), "{}", both.stderr);

    // A bad line is named by its number, and never shown.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tokens");
    std::fs::write(&bad, format!("read {READ}\nwrite {ADMIN}\n")).unwrap();
    let out = run(
        &server_args("127.0.0.1:0", &["--auth-token-file", path(&bad)]),
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = format!(
        "the token file {}, line 2: the first field must be the role",
        bad.display()
    );
    assert!(out.stderr.contains(&line), "{line:?} in:\n{}", out.stderr);
    assert!(!out.stderr.contains(ADMIN), "{}", out.stderr);

    // Through the environment as well.
    let out = run(
        &server_args("127.0.0.1:0", &[]),
        &[("BLOX_AUTH_TOKEN_FILE", "/nonexistent/blox-tokens")],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot read the token file /nonexistent/blox-tokens"),
        "{}",
        out.stderr
    );

    // A key that is not one.
    let out = run(
        &server_args("127.0.0.1:0", &["--tls-cert", cert, "--tls-key", cert]),
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("holds no usable PEM private key"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn the_cli_reads_and_writes_over_https_with_its_token() {
    let secrets = secrets();
    let (cert, key, tokens) = (path(&secrets.cert), path(&secrets.key), path(&secrets.tokens));
    let blox = BloxProcess::start(
        BLOX,
        server_args(
            "127.0.0.1:0",
            &["--tls-cert", cert, "--tls-key", key, "--auth-token-file", tokens],
        ),
        &[],
    )
    .await
    .expect("blox serves HTTPS");
    let url = blox.base_url().to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // The library client, as the CLI builds it.
    let pem = std::fs::read(&secrets.cert).unwrap();
    let client = Client::with_options(
        &url,
        &ClientOptions {
            token: Some(READ.into()),
            ca_certs_pem: Some(pem),
        },
    )
    .unwrap();
    wait_until("the demo account is mirrored", DEADLINE, || async {
        client
            .list_instances(&InstanceQuery {
                cluster: Some("demo-prod".into()),
                ..InstanceQuery::default()
            })
            .await
            .is_ok_and(|list| list.items.len() == 12)
    })
    .await;

    let cli = |args: &[&str], token: Option<&str>| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend([
            "--endpoint".into(),
            url.clone(),
            "--ca-cert".into(),
            cert.to_owned(),
        ]);
        if let Some(token) = token {
            all.extend(["--token".into(), token.to_owned()]);
        }
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            run(&args, &[]).await
        }
    };

    // Reads with a read token: flag or environment.
    let listed = cli(&["instances", "list", "--cluster", "demo-prod"], Some(READ)).await;
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    assert_eq!(
        listed.stdout.matches("demo-prod").count(),
        12,
        "{}",
        listed.stdout
    );
    let tasks = run(
        &[
            "tasks",
            "list",
            "--cluster",
            "demo-prod",
            "--endpoint",
            &url,
            "--ca-cert",
            cert,
        ],
        &[("BLOX_TOKEN", READ)],
    )
    .await;
    assert_eq!(tasks.code, Some(0), "{}", tasks.stderr);
    assert!(tasks.stdout.contains("RUNNING"), "{}", tasks.stdout);

    // A wrong token, no token: 401, and the server's message.
    let wrong = cli(&["instances", "list"], Some("not-a-token-of-this-blox")).await;
    assert_eq!(wrong.code, Some(1), "{}", wrong.stdout);
    assert!(
        wrong
            .stderr
            .contains("the token is not valid for this blox (code Unauthorized, HTTP 401)"),
        "{}",
        wrong.stderr
    );
    assert!(
        !wrong.stderr.contains("not-a-token-of-this-blox"),
        "{}",
        wrong.stderr
    );
    let none = cli(&["instances", "list"], None).await;
    assert_eq!(none.code, Some(1));
    assert!(
        none.stderr.contains("this blox requires a token") && none.stderr.contains("HTTP 401"),
        "{}",
        none.stderr
    );

    // Writes: 403 for a read token, done with an admin token.
    let create = [
        "env",
        "create",
        "logs",
        "--cluster",
        "demo-prod",
        "--task-definition",
        "log-router:1",
    ];
    let forbidden = cli(&create, Some(READ)).await;
    assert_eq!(forbidden.code, Some(1), "{}", forbidden.stdout);
    assert!(
        forbidden.stderr.contains("a read token cannot POST") && forbidden.stderr.contains("HTTP 403"),
        "{}",
        forbidden.stderr
    );
    let created = cli(&create, Some(ADMIN)).await;
    assert_eq!(created.code, Some(0), "{}", created.stderr);
    let described = cli(&["env", "describe", "logs", "--json"], Some(READ)).await;
    assert_eq!(described.code, Some(0), "{}", described.stderr);
    assert!(described.stdout.contains("log-router"), "{}", described.stdout);

    // The certificate is checked: without --ca-cert the system's roots do not know it.
    let untrusted = run(&["instances", "list", "--endpoint", &url, "--token", READ], &[]).await;
    assert_eq!(untrusted.code, Some(1), "{}", untrusted.stdout);
    assert!(
        untrusted.stderr.contains("cannot reach blox at https://"),
        "{}",
        untrusted.stderr
    );
    // Nothing is served in clear on the HTTPS port.
    let clear = url.replacen("https://", "http://", 1);
    let plain = run(&["instances", "list", "--endpoint", &clear, "--token", READ], &[]).await;
    assert_eq!(plain.code, Some(1), "{}", plain.stdout);
}

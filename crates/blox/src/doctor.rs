//! `blox doctor`: with `blox server`'s flags, checks what the server would need from AWS and from its
//! store, and prints one line per check: OK, FAIL with the problem and its fix, or SKIP with why.
//! Exits non-zero when any check failed.

use anyhow::{Result, bail};
use blox_aws::doctor::{Finding, Options, Outcome, check_account};
use blox_store::{Kind, StoreOptions};

use crate::server::{ServerArgs, open_store, replica_id};

pub async fn run(args: ServerArgs) -> Result<()> {
    let mut findings = match args.ecs.as_str() {
        "aws" => match blox_aws::sdk_config().await {
            Ok(config) => {
                let options = Options {
                    queue: args.queue.clone(),
                    clusters: args
                        .clusters
                        .as_ref()
                        .map(|clusters| clusters.iter().map(ToString::to_string).collect()),
                };
                check_account(&config, &options).await
            }
            Err(err) => vec![Finding {
                check: "AWS configuration".to_owned(),
                outcome: Outcome::Problem {
                    problem: err.to_string(),
                    fix: "set AWS_REGION and credentials (environment, profile, or an instance or task role)"
                        .to_owned(),
                },
            }],
        },
        "sim" => vec![Finding {
            check: "ECS".to_owned(),
            outcome: Outcome::Skipped("--ecs sim: the built-in simulator needs no AWS account".to_owned()),
        }],
        other => bail!("--ecs must be aws or sim, not {other:?}"),
    };
    findings.push(store_finding(&args).await);

    for finding in &findings {
        println!("{}", line(finding));
    }
    let problems = findings.iter().filter(|finding| finding.is_problem()).count();
    if problems > 0 {
        bail!("{problems} problem(s): see the FAIL lines above");
    }
    println!("everything blox needs is in place");
    Ok(())
}

/// One check, on one line.
fn line(finding: &Finding) -> String {
    match &finding.outcome {
        Outcome::Ok(detail) => format!("OK    {}: {detail}", finding.check),
        Outcome::Problem { problem, fix } => format!("FAIL  {}: {problem}. Fix: {fix}", finding.check),
        Outcome::Skipped(why) => format!("SKIP  {}: {why}", finding.check),
    }
}

/// Whether the store opens (and what it holds).
async fn store_finding(args: &ServerArgs) -> Finding {
    let spec = args.store_spec();
    let check = format!("store {spec}");
    let options = StoreOptions {
        change_log_retention: args.change_log_retention.max(1),
        tombstone_retention: args.tombstone_retention,
        ..StoreOptions::default()
    };
    // The replica id names no port here: the doctor serves nothing.
    let id = replica_id(
        args.replicas.replica_id.as_ref(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    let outcome = match open_store(&spec, options, &args.replicas, id).await {
        Ok((store, _)) => {
            let tasks = store.count(Kind::Task).await.unwrap_or(0);
            let instances = store.count(Kind::Instance).await.unwrap_or(0);
            Outcome::Ok(format!("opens ({tasks} tasks, {instances} container instances)"))
        }
        // redb locks its file, the log store its directory: a server running on it is not a problem
        // of the store's.
        Err(err) if format!("{err:#}").contains("already open") => {
            Outcome::Ok("in use by a running blox server".to_owned())
        }
        Err(err) => Outcome::Problem {
            problem: format!("{err:#}"),
            fix: "check --store (log:DIR or redb:PATH with a writable directory, memory, or etcd:http://HOST:PORT and the --etcd-* flags)"
                .to_owned(),
        },
    };
    Finding { check, outcome }
}

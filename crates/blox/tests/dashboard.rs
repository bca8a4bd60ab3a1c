//! The dashboard (`/ui/`) as an operator sees it: the real binary (`blox up` and its simulated
//! account) in a real headless Chromium (blox-testkit's [`Browser`]). Each page is compared with what
//! the API answers, live updates are followed without a reload, the actions are clicked with an
//! admin token and absent with a read token, screenshots are taken for the docs, and a 10,000-instance
//! cluster is rendered once for its timings. Every test ends with no error in the browser's console.
//!
//! The page contract: after each render `body[data-ready="1"]` and `body[data-page]` names the page;
//! `window.bloxRenders` counts renders; the elements and `data-` attributes named below.
//!
//! Screenshots go to `docs/screenshots/` with `BLOX_UPDATE_SCREENSHOTS=1`, to a temporary directory
//! otherwise; the 10,000-instance timings to `target/bench/dashboard.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blox_testkit::{Api, BloxProcess, Browser, deployment_id, wait_until, workspace_root};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
/// Starting blox, a deployment of the demo's first revision, a page's render.
const DEADLINE: Duration = Duration::from_secs(30);
/// A rollout of `log-router:2` over demo-prod's 12 instances: about 45 s one instance at a time (the
/// default minHealthyPercent), 15 s three at a time.
const ROLLOUT: Duration = Duration::from_secs(180);
/// The 10,000-instance account, in a debug build.
const LARGE: Duration = Duration::from_secs(180);
/// How often the page and the API are compared.
const POLL: Duration = Duration::from_millis(50);

/// The demo account's cluster with an environment, and that environment.
const CLUSTER: &str = "demo-prod";
const ENVIRONMENT: &str = "logs";
/// The demo account: 21 container instances over three clusters.
const CLUSTERS: &[&str] = &["demo-batch", "demo-prod", "demo-staging"];
const DEMO_INSTANCES: usize = 21;

const ADMIN: &str = "admin-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

/// `blox up` on a fresh data directory, without churn (the numbers stay put once converged).
struct Up {
    blox: BloxProcess,
    api: Api,
    _data: tempfile::TempDir,
}

impl Up {
    /// `blox up --sim-churn none` and `extra`; with `token`, the API client sends it.
    async fn start(extra: &[&str], token: Option<&str>) -> Up {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().to_str().expect("UTF-8 path");
        let mut args = vec!["up", "--listen", "127.0.0.1:0", "--data-dir", dir];
        args.extend(["--sim-churn", "none"]);
        args.extend(extra);
        let blox = BloxProcess::start(BLOX, &args, &[])
            .await
            .expect("blox up starts");
        let api = match token {
            Some(token) => Api::with_token(blox.base_url(), token),
            None => blox.api().clone(),
        };
        wait_until("blox is ready", DEADLINE, || async {
            api.try_call(Method::GET, "/readyz", None)
                .await
                .is_ok_and(|(status, body)| status == 200 && body["ready"] == true)
        })
        .await;
        Up {
            blox,
            api,
            _data: data,
        }
    }

    /// The demo account, served in full (`extra` and `token` as for [`Up::start`]).
    async fn demo(extra: &[&str], token: Option<&str>) -> Up {
        let up = Up::start(extra, token).await;
        wait_until("the demo account is served", DEADLINE, || async {
            up.instances(None).await.len() == DEMO_INSTANCES
        })
        .await;
        up
    }

    fn url(&self, path: &str) -> String {
        self.blox.url(path)
    }

    /// The container instances (of `cluster`, or all), as the API lists them.
    async fn instances(&self, cluster: Option<&str>) -> Vec<Value> {
        let path = match cluster {
            Some(cluster) => format!("/v1/instances?cluster={cluster}"),
            None => "/v1/instances".to_owned(),
        };
        items(self.api.ok(Method::GET, &path, None).await)
    }

    /// The ARNs of a cluster's container instances.
    async fn instance_arns(&self, cluster: &str) -> BTreeSet<String> {
        let arns = self.instances(Some(cluster)).await;
        arns.iter()
            .map(|i| text(&i["entity"]["containerInstanceARN"]))
            .collect()
    }

    /// The tasks of a cluster with a `lastStatus`, as the API lists them.
    async fn tasks(&self, cluster: &str, status: &str) -> Vec<Value> {
        let path = format!("/v1/tasks?cluster={cluster}&status={status}");
        items(self.api.ok(Method::GET, &path, None).await)
    }

    /// Creates the environment `logs` on demo-prod with `log-router:1` and `configuration`, deploys
    /// it and waits until its 12 instances run it.
    async fn logs_environment(&self, configuration: Value) -> String {
        self.api
            .ok(
                Method::POST,
                &format!("/v1/{CLUSTER}/environments"),
                Some(json!({
                    "environmentName": ENVIRONMENT,
                    "taskDefinition": "log-router:1",
                    "deploymentConfiguration": configuration,
                })),
            )
            .await;
        let id = self.api.deploy(CLUSTER, ENVIRONMENT, 1).await;
        let eligible = self.instances(Some(CLUSTER)).await.len();
        self.api
            .wait_completed(CLUSTER, ENVIRONMENT, &id, eligible, DEADLINE)
            .await;
        id
    }

    /// Updates `logs` to `log-router:2` (revision 2) and starts its deployment; its id.
    async fn start_second_revision(&self) -> String {
        self.api
            .ok(
                Method::PUT,
                &format!("/v1/{CLUSTER}/environments/{ENVIRONMENT}"),
                Some(json!({"taskDefinition": "log-router:2", "baseRevisionId": "1"})),
            )
            .await;
        self.api.deploy(CLUSTER, ENVIRONMENT, 2).await
    }

    /// `logs` as `GET /v1/{cluster}/environments/{env}` describes it.
    async fn environment(&self) -> Value {
        let path = format!("/v1/{CLUSTER}/environments/{ENVIRONMENT}");
        self.api.ok(Method::GET, &path, None).await["environment"].clone()
    }

    /// `logs`'s deployments, newest first.
    async fn deployments(&self) -> Vec<Value> {
        let path = format!("/v1/{CLUSTER}/environments/{ENVIRONMENT}/deployments");
        let list = self.api.ok(Method::GET, &path, None).await;
        list["deployments"].as_array().cloned().unwrap_or_default()
    }

    /// The ARN of a running task of `cluster` and of its container instance.
    async fn task_and_instance(&self, cluster: &str) -> (String, String) {
        let tasks = self.tasks(cluster, "RUNNING").await;
        let task = tasks.first().expect("the cluster runs tasks");
        (
            text(&task["entity"]["taskARN"]),
            text(&task["entity"]["containerInstanceARN"]),
        )
    }
}

/// A list answer's `items`.
fn items(answer: Value) -> Vec<Value> {
    answer["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {answer}"))
        .clone()
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
        .to_owned()
}

/// `encodeURIComponent`: how the dashboard puts an ARN in a path.
fn encode(component: &str) -> String {
    component
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A headless Chromium (tests fail, not skip, without one).
async fn browser() -> Browser {
    Browser::start()
        .await
        .expect("a headless Chromium starts (apt-get install -y chromium chromium-driver)")
}

/// The condition that the page `page` has rendered.
fn rendered(page: &str) -> String {
    format!("document.body && document.body.dataset.ready === '1' && document.body.dataset.page === '{page}'")
}

/// Opens `url` and waits until the page `page` has rendered.
async fn open(browser: &Browser, url: &str, page: &str) {
    browser.goto(url).await.unwrap();
    browser
        .wait_for(
            &format!("{url} renders the {page} page"),
            &rendered(page),
            DEADLINE,
        )
        .await
        .unwrap();
}

/// `window.bloxRenders`.
async fn renders(browser: &Browser) -> u64 {
    let value = browser.eval("window.bloxRenders").await.unwrap();
    value
        .as_u64()
        .unwrap_or_else(|| panic!("window.bloxRenders is a count: {value}"))
}

/// Fails with the console's errors, if any.
async fn no_console_errors(browser: &Browser, when: &str) {
    let errors = browser.console_errors().await.unwrap();
    assert!(errors.is_empty(), "console errors {when}: {errors:#?}");
}

/// A page's numbers: `data-field` cells under each element that `rows` selects, keyed by the row's
/// `key` data attribute, each cell's text with digit group separators removed.
const FIELDS: &str = r#"
const [rows, key] = arguments;
const clean = t => t.trim().replace(/^(-?[0-9][0-9,\u00a0\u202f ]*)$/, m => m.replace(/[,\u00a0\u202f ]/g, ''));
return Object.fromEntries([...document.querySelectorAll(rows)].map(row => [
  row.dataset[key],
  Object.fromEntries([...row.querySelectorAll('[data-field]')].map(c => [c.dataset.field, clean(c.innerText)])),
]));
"#;

async fn fields(browser: &Browser, rows: &str, key: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let value = browser.run(FIELDS, vec![json!(rows), json!(key)]).await.unwrap();
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{rows}: {e}: {value}"))
}

/// The numeric text of an element (`#grid-count`, a `data-field` cell), without group separators.
async fn number(browser: &Browser, css: &str) -> Option<u64> {
    let text = browser.text(css).await.ok()?;
    text.chars()
        .filter(|c| !matches!(c, ',' | ' ' | '\u{a0}' | '\u{202f}'))
        .collect::<String>()
        .parse()
        .ok()
}

/// Waits until the two values `read` gives agree: (what the API says, what the page shows); returns
/// the page's, or panics with the last two when `deadline` passes first. The page follows the API by
/// live updates, so the two may differ for a moment.
async fn agree<F, Fut, T>(what: &str, deadline: Duration, mut read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (T, T)>,
    T: PartialEq + std::fmt::Debug,
{
    let start = Instant::now();
    loop {
        let (api, page) = read().await;
        if api == page {
            return page;
        }
        if start.elapsed() >= deadline {
            panic!("after {deadline:?}, {what}: the API says\n{api:#?}\nthe page shows\n{page:#?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The coverage of each cell of a grid: ARN → state.
const CELLS: &str = r#"
return Object.fromEntries([...document.querySelectorAll(arguments[0])].map(c => [c.dataset.arn, c.dataset.coverage]));
"#;

async fn cells(browser: &Browser, grid: &str) -> BTreeMap<String, String> {
    let value = browser
        .run(CELLS, vec![json!(format!("{grid} .cell"))])
        .await
        .unwrap();
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{grid}: {e}: {value}"))
}

// ---------------------------------------------------------------------------------------------
// a. Every page, and the numbers the API gives.

#[tokio::test]
async fn every_page_loads_without_console_errors() {
    let up = Up::demo(&[], None).await;
    up.logs_environment(json!({})).await;
    let (task, instance) = up.task_and_instance(CLUSTER).await;
    let pages = [
        ("/ui/".to_owned(), "overview"),
        (format!("/ui/clusters/{CLUSTER}"), "cluster"),
        ("/ui/clusters/demo-staging".to_owned(), "cluster"),
        (format!("/ui/environments/{ENVIRONMENT}"), "environment"),
        ("/ui/tasks".to_owned(), "tasks"),
        ("/ui/instances".to_owned(), "instances"),
        (format!("/ui/tasks/{CLUSTER}/{}", encode(&task)), "task"),
        (
            format!("/ui/instances/{CLUSTER}/{}", encode(&instance)),
            "instance",
        ),
    ];
    let browser = browser().await;
    for (path, page) in &pages {
        open(&browser, &up.url(path), page).await;
        assert!(
            renders(&browser).await >= 1,
            "{path}: window.bloxRenders counts renders"
        );
        no_console_errors(&browser, &format!("on {path}")).await;
    }
    // Reloaded in place, a client-side route renders the same page.
    browser.reload().await.unwrap();
    browser
        .wait_for("the instance page renders again", &rendered("instance"), DEADLINE)
        .await
        .unwrap();
    no_console_errors(&browser, "at the end").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn the_root_redirects_to_the_overview_which_shows_the_api_counts() {
    let up = Up::demo(&[], None).await;
    up.logs_environment(json!({})).await;

    let http = blox_testkit::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = http.get(up.url("/")).send().await.unwrap();
    assert!(root.status().is_redirection(), "GET /: {}", root.status());
    let location = root.headers()[reqwest::header::LOCATION].to_str().unwrap();
    assert!(location.ends_with("/ui/"), "GET / redirects to {location}");

    let browser = browser().await;
    open(&browser, &up.url("/"), "overview").await;
    assert_eq!(browser.url().await.unwrap(), up.url("/ui/"));

    // One row per cluster: its instances, and its tasks by lastStatus.
    agree("the clusters' counts", DEADLINE, || async {
        let mut api = BTreeMap::new();
        for cluster in CLUSTERS {
            let mut row = BTreeMap::new();
            let instances = up.instances(Some(cluster)).await.len();
            row.insert("instances".to_owned(), instances.to_string());
            for status in ["RUNNING", "PENDING", "STOPPED"] {
                let tasks = up.tasks(cluster, status).await.len();
                row.insert(format!("tasks-{status}"), tasks.to_string());
            }
            api.insert(cluster.to_string(), row);
        }
        let mut page = fields(&browser, "#clusters tr[data-cluster]", "cluster").await;
        for (cluster, row) in &mut page {
            // Only the columns compared; the page may show more.
            if let Some(wanted) = api.get(cluster) {
                row.retain(|field, _| wanted.contains_key(field));
            }
        }
        (api, page)
    })
    .await;

    // One row per environment: health and counts.
    agree("the environments' counts", DEADLINE, || async {
        let env = up.environment().await;
        let api = BTreeMap::from([(
            ENVIRONMENT.to_owned(),
            BTreeMap::from([
                ("health".to_owned(), text(&env["environmentHealth"])),
                ("desired".to_owned(), env["counts"]["desired"].to_string()),
                ("healthy".to_owned(), env["counts"]["healthy"].to_string()),
                ("uncovered".to_owned(), env["uncovered"].to_string()),
            ]),
        )]);
        let mut page = fields(&browser, "#environments tr[data-environment]", "environment").await;
        for row in page.values_mut() {
            row.retain(|field, _| ["health", "desired", "healthy", "uncovered"].contains(&field.as_str()));
        }
        (api, page)
    })
    .await;
    let environment = up.environment().await;
    assert_eq!(environment["environmentHealth"], "Healthy");
    assert_eq!(environment["counts"]["healthy"], 12);

    agree("the dead letters' count", DEADLINE, || async {
        let api = items(up.api.ok(Method::GET, "/v1/dead-letters", None).await).len() as u64;
        (Some(api), number(&browser, "#dead-letters").await)
    })
    .await;
    no_console_errors(&browser, "at the end").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn a_cluster_grid_has_a_cell_per_instance_with_its_coverage() {
    let up = Up::demo(&[], None).await;
    up.logs_environment(json!({})).await;
    let browser = browser().await;

    // demo-prod's instances all run a healthy daemon of `logs`; no environment targets the others.
    for (cluster, coverage) in [
        (CLUSTER, "healthy"),
        ("demo-staging", "none"),
        ("demo-batch", "none"),
    ] {
        open(&browser, &up.url(&format!("/ui/clusters/{cluster}")), "cluster").await;
        let shown = agree(&format!("{cluster}'s grid"), DEADLINE, || async {
            let api: BTreeMap<String, String> = up
                .instance_arns(cluster)
                .await
                .into_iter()
                .map(|arn| (arn, coverage.to_owned()))
                .collect();
            (api, cells(&browser, "#grid").await)
        })
        .await;
        assert!(!shown.is_empty(), "{cluster} has instances");
        assert_eq!(
            number(&browser, "#grid-count").await,
            Some(shown.len() as u64),
            "{cluster}: #grid-count"
        );
        no_console_errors(&browser, &format!("on {cluster}'s page")).await;
    }

    // A cluster query, where the page takes one.
    open(&browser, &up.url(&format!("/ui/clusters/{CLUSTER}")), "cluster").await;
    if browser.count("input#filter").await.unwrap() > 0 {
        let query = "attribute:ecs.availability-zone == us-east-1a";
        let before = renders(&browser).await;
        browser
            .fill("input#filter", &format!("{query}{}", Browser::ENTER))
            .await
            .unwrap();
        let path = format!("/v1/instances?cluster={CLUSTER}&filter={}", encode(query));
        let matched: BTreeSet<String> = items(up.api.ok(Method::GET, &path, None).await)
            .iter()
            .map(|i| text(&i["entity"]["containerInstanceARN"]))
            .collect();
        assert!(
            !matched.is_empty() && matched.len() < up.instances(Some(CLUSTER)).await.len(),
            "the query picks some of demo-prod's instances: {matched:?}"
        );
        agree("the filtered grid", DEADLINE, || async {
            let page: BTreeSet<String> = cells(&browser, "#grid").await.into_keys().collect();
            (matched.clone(), page)
        })
        .await;
        assert!(renders(&browser).await > before);
        assert_eq!(number(&browser, "#grid-count").await, Some(matched.len() as u64));
    }
    no_console_errors(&browser, "at the end").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn the_environment_page_shows_the_deployment_and_its_counts() {
    let up = Up::demo(&[], None).await;
    let id = up.logs_environment(json!({})).await;
    let browser = browser().await;
    open(
        &browser,
        &up.url(&format!("/ui/environments/{ENVIRONMENT}")),
        "environment",
    )
    .await;

    agree("the rollout's counts", DEADLINE, || async {
        let env = up.environment().await;
        let deployment = up.api.deployment(CLUSTER, ENVIRONMENT, &id).await;
        let api = json!({
            "status": deployment["status"],
            "desired": env["counts"]["desired"].to_string(),
            "healthy": env["counts"]["healthy"].to_string(),
            "total": env["counts"]["total"].to_string(),
            "failed": deployment["failedAttempts"].to_string(),
            "progress": "100",
        });
        let page = browser
            .run(
                r#"const q = s => document.querySelector(s);
                   const f = n => q(`#rollout [data-field="${n}"]`)?.innerText.trim();
                   return {status: q('#deployment-status')?.innerText.trim(), desired: f('desired'),
                           healthy: f('healthy'), total: f('total'), failed: f('failed'),
                           progress: q('#progress')?.dataset.progress};"#,
                vec![],
            )
            .await
            .unwrap();
        (api, page)
    })
    .await;
    assert_eq!(
        up.api.deployment(CLUSTER, ENVIRONMENT, &id).await["status"],
        "completed"
    );

    // The rollout grid: every eligible instance, each with the environment's healthy daemon.
    let arns = up.instance_arns(CLUSTER).await;
    agree("the rollout grid", DEADLINE, || async {
        let api: BTreeMap<String, String> = arns
            .iter()
            .map(|arn| (arn.clone(), "healthy".to_owned()))
            .collect();
        (api, cells(&browser, "#rollout-grid").await)
    })
    .await;

    // The history: the one deployment, completed.
    let status = browser
        .text(&format!(
            "#deployments tr[data-deployment='{id}'] td[data-field='status']"
        ))
        .await
        .unwrap();
    assert_eq!(status, "completed");
    assert_eq!(
        browser.count("#deployments tr[data-deployment]").await.unwrap(),
        1
    );
    no_console_errors(&browser, "at the end").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn the_tasks_and_instances_pages_search_and_page_through_the_api_lists() {
    // More than a page of each (a page is at most 100 rows): two clusters of 150 instances, 300 tasks.
    let up = Up::start(
        &[
            "--sim-scenario",
            "scale",
            "--sim-clusters",
            "2",
            "--sim-instances",
            "300",
            "--sim-tasks",
            "600",
            "--sim-throttle",
            "describe=off,list=off",
        ],
        None,
    )
    .await;
    let cluster = "scale-00";
    wait_until("scale-00's instances and tasks are served", DEADLINE, || async {
        up.instances(Some(cluster)).await.len() == 150 && up.tasks(cluster, "RUNNING").await.len() == 300
    })
    .await;
    let browser = browser().await;

    // (page, the search's status, the API's list of that search)
    let running = up.tasks(cluster, "RUNNING").await;
    let active = items(
        up.api
            .ok(
                Method::GET,
                &format!("/v1/instances?cluster={cluster}&status=ACTIVE"),
                None,
            )
            .await,
    );
    let arn_of = |item: &Value, field: &str| text(&item["entity"][field]);
    let searches = [
        (
            "tasks",
            "RUNNING",
            running
                .iter()
                .map(|t| arn_of(t, "taskARN"))
                .collect::<BTreeSet<_>>(),
        ),
        (
            "instances",
            "ACTIVE",
            active
                .iter()
                .map(|i| arn_of(i, "containerInstanceARN"))
                .collect::<BTreeSet<_>>(),
        ),
    ];
    for (page, status, wanted) in searches {
        assert!(
            wanted.len() > 100,
            "{page}: more than a page to list: {}",
            wanted.len()
        );
        open(&browser, &up.url(&format!("/ui/{page}")), page).await;
        browser
            .wait_for(
                &format!("the {page} page lists rows"),
                "document.querySelectorAll('table#entities tr[data-arn]').length > 0",
                DEADLINE,
            )
            .await
            .unwrap();
        let before = renders(&browser).await;
        browser.fill("input#search-cluster", cluster).await.unwrap();
        browser.fill("input#search-status", status).await.unwrap();
        browser.click("button#search").await.unwrap();
        wait_rendered_after(&browser, before, &format!("the {page} search")).await;

        // Every page of the search, through #next, holds exactly the API's list.
        let mut seen = BTreeSet::new();
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages < 100, "{page}: #next never ends");
            let rows: Vec<String> = serde_json::from_value(
                browser
                    .eval("[...document.querySelectorAll('table#entities tr[data-arn]')].map(r => r.dataset.arn)")
                    .await
                    .unwrap(),
            )
            .unwrap();
            for arn in rows {
                assert!(seen.insert(arn.clone()), "{page}: {arn} is listed twice");
            }
            let more = browser
                .eval("(b => !!b && !b.disabled && b.getClientRects().length > 0)(document.querySelector('button#next'))")
                .await
                .unwrap();
            if more != true {
                break;
            }
            let before = renders(&browser).await;
            browser.click("button#next").await.unwrap();
            wait_rendered_after(&browser, before, &format!("the {page} page after #next")).await;
        }
        assert_eq!(seen, wanted, "{page}: cluster {cluster}, status {status}");
        assert!(pages >= 2, "{page}: {} rows on {pages} page(s)", seen.len());
        no_console_errors(&browser, &format!("on the {page} page")).await;
    }

    // An entity's page: its raw JSON, the API's document.
    let (task, instance) = up.task_and_instance(cluster).await;
    for (page, kind, arn) in [("task", "tasks", &task), ("instance", "instances", &instance)] {
        open(
            &browser,
            &up.url(&format!("/ui/{kind}/{cluster}/{}", encode(arn))),
            page,
        )
        .await;
        let raw = browser.text("pre#raw").await.unwrap();
        let raw: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{page}: pre#raw: {e}: {raw}"));
        let api = up
            .api
            .ok(Method::GET, &format!("/v1/{kind}/{cluster}/{arn}"), None)
            .await;
        // The whole record, or its entity.
        assert!(
            raw == api || raw == api["entity"],
            "{page}: pre#raw holds\n{raw:#}\nthe API answers\n{api:#}"
        );
    }
    no_console_errors(&browser, "at the end").await;
    browser.close().await.unwrap();
}

/// Waits until the page has rendered again since `window.bloxRenders` was `before`.
async fn wait_rendered_after(browser: &Browser, before: u64, what: &str) {
    browser
        .wait_for(
            &format!("{what} renders"),
            &format!("window.bloxRenders > {before} && document.body.dataset.ready === '1'"),
            DEADLINE,
        )
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// b. Live updates.

#[tokio::test]
async fn a_deployment_is_seen_progressing_without_a_reload() {
    let up = Up::demo(&[], None).await;
    // Three instances at a time: a rollout of four steps, each a few seconds long.
    up.logs_environment(json!({"minHealthyPercent": 75})).await;
    let browser = browser().await;
    open(
        &browser,
        &up.url(&format!("/ui/environments/{ENVIRONMENT}")),
        "environment",
    )
    .await;
    browser.eval("window.__noReload = 1").await.unwrap();
    let before = renders(&browser).await;

    let id = up.start_second_revision().await;
    // Followed on the page only: the page's status, counts and progress, as it shows them.
    let read = r#"const q = s => document.querySelector(s);
        const f = n => q(`#rollout [data-field="${n}"]`)?.innerText.trim();
        return {status: q('#deployment-status')?.innerText.trim(), desired: f('desired'),
                healthy: f('healthy'), progress: Number(q('#progress')?.dataset.progress),
                row: q(`#deployments tr[data-deployment="${arguments[0]}"] td[data-field="status"]`)?.innerText.trim(),
                marker: window.__noReload};"#;
    let start = Instant::now();
    let mut seen: Vec<Value> = Vec::new();
    let last = loop {
        let page = browser.run(read, vec![json!(id)]).await.unwrap();
        if seen.last() != Some(&page) {
            seen.push(page.clone());
        }
        if page["row"] == "completed" && page["status"] == "completed" {
            break page;
        }
        assert!(
            start.elapsed() < ROLLOUT,
            "the page never showed deployment {id} completed within {ROLLOUT:?}; it showed:\n{seen:#?}"
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(last["marker"], 1, "the page was not reloaded");
    assert_eq!(last["healthy"], last["desired"], "{last}");
    assert_eq!(last["desired"], "12", "{last}");
    assert_eq!(last["progress"], 100, "{last}");
    assert!(
        seen.iter().any(|p| p["status"] == "running"),
        "the deployment was seen running: {seen:#?}"
    );
    assert!(
        seen.iter()
            .filter_map(|p| p["progress"].as_f64())
            .any(|p| 0.0 < p && p < 100.0),
        "the deployment was seen part done: {seen:#?}"
    );
    let after = renders(&browser).await;
    assert!(
        after > before + 1,
        "live renders: {before} before the deployment, {after} after"
    );
    assert_eq!(
        up.api.deployment(CLUSTER, ENVIRONMENT, &id).await["status"],
        "completed"
    );
    no_console_errors(&browser, "at the end").await;
    browser.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// c. Tokens: an admin acts, a reader only reads.

/// Signs in on the page's login form with `token`, at `url`, and waits for `page`.
async fn sign_in(browser: &Browser, url: &str, token: &str, page: &str) {
    browser.goto(url).await.unwrap();
    browser
        .wait_for(
            "the login form",
            "document.querySelector('form#login input#token')?.getClientRects().length > 0",
            DEADLINE,
        )
        .await
        .unwrap();
    browser.fill("input#token", token).await.unwrap();
    browser.click("button#login-submit").await.unwrap();
    browser
        .wait_for(
            &format!("{url} renders after signing in"),
            &rendered(page),
            DEADLINE,
        )
        .await
        .unwrap();
}

/// Clicks an action's button, then `#confirm-ok` or `#confirm-cancel` in the dialog it opens.
async fn act(browser: &Browser, action: &str, confirm: bool) {
    let button = format!("button[data-action='{action}']");
    browser
        .wait_for(
            &format!("the {action} button"),
            &format!("!!document.querySelector(\"{button}\")"),
            DEADLINE,
        )
        .await
        .unwrap();
    browser.click(&button).await.unwrap();
    browser
        .wait_for(
            &format!("the confirmation of {action}"),
            "document.querySelector('dialog#confirm')?.open === true",
            DEADLINE,
        )
        .await
        .unwrap();
    let choice = if confirm { "#confirm-ok" } else { "#confirm-cancel" };
    browser.click(choice).await.unwrap();
    browser
        .wait_for(
            &format!("the confirmation of {action} closes"),
            "!document.querySelector('dialog#confirm')?.open",
            DEADLINE,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_admin_stops_and_rolls_back_and_a_reader_sees_no_actions() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# the dashboard's tests\nadmin {ADMIN}\nread {READ}\n"),
    )
    .unwrap();
    let up = Up::demo(&["--auth-token-file", tokens.to_str().unwrap()], Some(ADMIN)).await;
    let first = up.logs_environment(json!({})).await;
    // One instance at a time: the rollout runs long enough to be stopped from the page.
    let second = up.start_second_revision().await;
    let env_page = up.url(&format!("/ui/environments/{ENVIRONMENT}"));

    let browser = browser().await;
    sign_in(&browser, &env_page, ADMIN, "environment").await;
    let stored = browser.eval("Object.values(sessionStorage)").await.unwrap();
    assert!(
        stored
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v.as_str().is_some_and(|v| v.contains(ADMIN)))),
        "the token is kept in sessionStorage: {stored}"
    );
    // Kept: a reload renders without asking again.
    browser.reload().await.unwrap();
    browser
        .wait_for(
            "the page renders after a reload",
            &rendered("environment"),
            DEADLINE,
        )
        .await
        .unwrap();

    // Cancelled, nothing happens; confirmed, the deployment stops.
    act(&browser, "stop", false).await;
    assert_eq!(
        up.api.deployment(CLUSTER, ENVIRONMENT, &second).await["status"],
        "running"
    );
    act(&browser, "stop", true).await;
    wait_until("the API reports the deployment stopped", DEADLINE, || async {
        up.api.deployment(CLUSTER, ENVIRONMENT, &second).await["status"] == "stopped"
    })
    .await;
    browser
        .wait_for(
            "the page shows the deployment stopped",
            "document.querySelector('#deployment-status')?.innerText.trim() === 'stopped'",
            DEADLINE,
        )
        .await
        .unwrap();
    assert!(
        !browser.text("#message").await.unwrap().is_empty(),
        "#message reports the stop"
    );

    // A rollback: a new deployment, of the revision that completed before.
    act(&browser, "rollback", true).await;
    wait_until("the API lists a rollback", DEADLINE, || async {
        up.deployments().await.iter().any(|d| d["rollback"] == true)
    })
    .await;
    let rollback = up
        .deployments()
        .await
        .into_iter()
        .find(|d| d["rollback"] == true)
        .expect("a rollback");
    let rollback_id = deployment_id(&rollback);
    assert!(rollback_id != first && rollback_id != second);
    assert_eq!(rollback["rollbackOf"], second.as_str(), "{rollback}");
    assert_eq!(rollback["environmentRevisionId"], "1", "{rollback}");
    browser
        .wait_for(
            "the page lists the rollback",
            &format!("!!document.querySelector(\"#deployments tr[data-deployment='{rollback_id}']\")"),
            DEADLINE,
        )
        .await
        .unwrap();
    no_console_errors(&browser, "as an admin").await;

    // A read token: the same pages, no action.
    browser.eval("sessionStorage.clear()").await.unwrap();
    sign_in(&browser, &env_page, READ, "environment").await;
    for (path, page) in [
        (format!("/ui/environments/{ENVIRONMENT}"), "environment"),
        ("/ui/".to_owned(), "overview"),
        (format!("/ui/clusters/{CLUSTER}"), "cluster"),
    ] {
        open(&browser, &up.url(&path), page).await;
        assert_eq!(
            browser.count("button[data-action]").await.unwrap(),
            0,
            "{path}: a reader sees no action"
        );
    }
    no_console_errors(&browser, "at the end").await;
    browser.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// d. Screenshots for the docs.

/// The environment page's rollout at least a quarter done, or over.
const PART_DONE: &str = "(status => (status === 'running' \
    && Number(document.querySelector('#progress')?.dataset.progress) >= 25) || status === 'completed')\
    (document.querySelector('#deployment-status')?.innerText.trim())";

#[tokio::test]
async fn screenshots_of_each_page() {
    let temporary = tempfile::tempdir().unwrap();
    let dir = if std::env::var("BLOX_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        workspace_root().join("docs/screenshots")
    } else {
        temporary.path().to_owned()
    };
    let up = Up::demo(&[], None).await;
    up.logs_environment(json!({"minHealthyPercent": 75})).await;
    let (task, instance) = up.task_and_instance(CLUSTER).await;
    // A rollout under way: the environment and cluster pages show it part done.
    up.start_second_revision().await;
    let browser = browser().await;
    let shots = [
        (
            "environment",
            format!("/ui/environments/{ENVIRONMENT}"),
            // Part done, unless the machine was too slow to catch it so.
            Some(PART_DONE),
        ),
        ("cluster", format!("/ui/clusters/{CLUSTER}"), None),
        ("overview", "/ui/".to_owned(), None),
        ("tasks", "/ui/tasks".to_owned(), None),
        ("task", format!("/ui/tasks/{CLUSTER}/{}", encode(&task)), None),
        ("instances", "/ui/instances".to_owned(), None),
        (
            "instance",
            format!("/ui/instances/{CLUSTER}/{}", encode(&instance)),
            None,
        ),
    ];
    for (page, path, condition) in shots {
        open(&browser, &up.url(&path), page).await;
        if let Some(condition) = condition {
            browser
                .wait_for(&format!("the {page} page to show"), condition, ROLLOUT)
                .await
                .unwrap();
        }
        let file = dir.join(format!("{page}.png"));
        browser.screenshot(&file).await.unwrap();
        let png = std::fs::read(&file).unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is a PNG",
            file.display()
        );
        eprintln!("{page}: {} ({} bytes)", file.display(), png.len());
        no_console_errors(&browser, &format!("on the {page} page")).await;
    }
    browser.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// e. A 10,000-instance cluster: timings printed and written, not asserted.

/// Where benchmark results go: `$CARGO_TARGET_DIR/bench`, or the workspace's `target/bench`.
fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("bench")
}

fn write_json(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

#[tokio::test]
async fn a_cluster_of_10000_instances_renders_its_grid() {
    const INSTANCES: usize = 10_000;
    let up = Up::start(
        &[
            "--sim-scenario",
            "scale",
            "--sim-clusters",
            "1",
            "--sim-instances",
            "10000",
            "--sim-tasks",
            "10000",
            "--sim-throttle",
            "describe=off,list=off",
        ],
        None,
    )
    .await;
    let cluster = "scale-00";
    wait_until("the 10,000 instances are served", LARGE, || async {
        up.instances(Some(cluster)).await.len() == INSTANCES
    })
    .await;

    let browser = browser().await;
    let started = Instant::now();
    browser
        .goto(&up.url(&format!("/ui/clusters/{cluster}")))
        .await
        .unwrap();
    browser
        .wait_for(
            "the grid has 10,000 cells",
            &format!(
                "({}) && document.querySelectorAll('#grid .cell').length === {INSTANCES}",
                rendered("cluster")
            ),
            LARGE,
        )
        .await
        .unwrap();
    let observed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let timing = browser
        .eval(
            "({bloxTiming: window.bloxTiming ?? null, now: performance.now(), \
              navigation: performance.getEntriesByType('navigation')[0]?.toJSON() ?? null, \
              renders: window.bloxRenders ?? null})",
        )
        .await
        .unwrap();
    assert_eq!(browser.count("#grid .cell").await.unwrap(), INSTANCES as u64);
    assert_eq!(number(&browser, "#grid-count").await, Some(INSTANCES as u64));

    let navigation = &timing["navigation"];
    let report = json!({
        "instances": INSTANCES,
        "renderMs": timing["bloxTiming"]["renderMs"],
        "bloxTiming": timing["bloxTiming"],
        "readyObservedAtMs": timing["now"],
        "gotoToReadyObservedMs": observed_ms,
        "renders": timing["renders"],
        "navigation": {
            "responseEndMs": navigation["responseEnd"],
            "domContentLoadedMs": navigation["domContentLoadedEventEnd"],
            "loadEventEndMs": navigation["loadEventEnd"],
            "transferSize": navigation["transferSize"],
        },
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    let path = bench_dir().join("dashboard.json");
    write_json(&path, &report);
    eprintln!(
        "dashboard, {INSTANCES} instances ({}):\n{report:#}",
        path.display()
    );
    println!("{report}");
    no_console_errors(&browser, "at the end").await;
    browser.close().await.unwrap();
}

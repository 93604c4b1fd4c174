//! The scenarios every provider goes through end to end, run for each row of the provider
//! table (`table.rs`): every kind and action succeeds; kinds and rules it cannot do are refused
//! up front; a fatal provider error fails the targets with its reason; a batch over the cap is
//! split; and, for a provider with quotas, a known-exhausted quota is refused at once and a
//! quota error fails the targets. A new provider's end-to-end tests are a row there and one
//! line in `scenarios!` below, plus its own tests of what is special to it.

mod table;

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use purge_service::pb::{self, CreatePurgeRequest, PurgeAction, PurgeKind, PurgeState};
use tempfile::TempDir;
use tonic::Code;

use crate::support::{
    TestApp, config, eventually, reason, refused_eventually, spawn_app, violations, wait_terminal,
};

/// One provider as the common scenarios see it. `F` is its fake (`()` for the in-process
/// sandbox).
pub struct Row<F: 'static> {
    /// Its name in the config and in `CreatePurgeRequest.provider`.
    pub name: &'static str,
    /// How the request ids its API answers with start (empty: it has none).
    pub request_ids: &'static str,
    /// Starts its fake: a real HTTP server on a free port.
    pub start: fn() -> BoxFuture<'static, F>,
    /// Its `[[providers]]` table pointing at the fake, secrets written under the path; the
    /// `Option` replaces the right secret, the `&str` are extra provider keys.
    pub provider_toml: fn(&F, Option<&str>, &str, &Path) -> String,
    /// Lines of its `[providers.limits]` table in every scenario.
    pub limits: &'static str,
    /// The kinds it can purge.
    pub kinds: &'static [PurgeKind],
    /// A request of `kind` it accepts (targets, hosts, headers as it needs them).
    pub sample: fn(PurgeKind) -> CreatePurgeRequest,
    /// Kind and action pairs it refuses (see `refusals`).
    pub refused_actions: &'static [(PurgeKind, PurgeAction)],
    /// What is special to check once every kind and action succeeded.
    pub check_sent: fn(&Running<F>, &[Done]),
    /// A kind it cannot purge.
    pub unsupported: PurgeKind,
    /// Its own rules, each broken by a request refused with one violation.
    pub refusals: fn() -> Vec<Refusal>,
    pub fatal: Fatal<F>,
    /// Purge calls it received, accepted or not.
    pub attempts: fn(&Running<F>) -> usize,
    /// The number of targets of each purge call it accepted.
    pub sent: fn(&Running<F>) -> Vec<usize>,
    /// Its quotas, if it has any.
    pub quota: Option<Quota<F>>,
}

/// How a provider's quota runs out, known in advance or met at submit.
pub struct Quota<F: 'static> {
    /// Makes the fake report `exhausted`'s quota used up, before the service starts.
    pub exhaust: fn(&F),
    /// Whether the service has read the quotas from the fake.
    pub read: fn(&F) -> bool,
    /// A request the exhausted quota refuses at CreatePurge.
    pub exhausted: fn() -> CreatePurgeRequest,
    /// Makes the fake refuse the next purge for its quota, which the service cannot know.
    pub refuse: fn(&F),
    /// A request the fake then refuses.
    pub refused: fn() -> CreatePurgeRequest,
    /// What the failures of `refused` say.
    pub reason: &'static str,
    /// A request of another kind, which the quota does not stop.
    pub unaffected: Option<fn() -> CreatePurgeRequest>,
}

/// A request refused at CreatePurge: the violation's field and what its description says.
pub struct Refusal {
    pub request: CreatePurgeRequest,
    pub field: &'static str,
    pub says: String,
}

/// How to make the provider fail a purge for good, and what the failure says.
pub struct Fatal<F: 'static> {
    /// A wrong secret in place of the right one.
    pub wrong_secret: Option<&'static str>,
    /// Extra provider keys.
    pub keys: &'static str,
    /// A fault set on the fake before the purge.
    pub fault: fn(&F),
    pub request: fn() -> CreatePurgeRequest,
    /// The targets of `request` that fail; the others succeed.
    pub failing: &'static [&'static str],
    /// What every failure's reason contains.
    pub reason: &'static str,
}

/// The service with one provider of a row, and its fake.
pub struct Running<F> {
    pub app: TestApp,
    pub fake: F,
    _dir: TempDir,
}

/// A finished purge of the every-kind scenario.
pub struct Done {
    pub kind: PurgeKind,
    pub action: PurgeAction,
    pub purge: pb::Purge,
}

impl Done {
    /// The purge of `kind` and `action`.
    pub fn of(done: &[Done], kind: PurgeKind, action: PurgeAction) -> &pb::Purge {
        &done
            .iter()
            .find(|d| d.kind == kind && d.action == action)
            .unwrap_or_else(|| panic!("no {kind:?} {action:?} purge"))
            .purge
    }
}

impl<F> Running<F> {
    /// Starts the row's fake and the service with its provider.
    pub async fn start(row: &Row<F>, secret: Option<&str>, keys: &str, limits: &str) -> Self {
        Self::start_with(row, secret, keys, limits, |_| {}).await
    }

    /// As `start`, with `prepare` applied to the fake before the service starts.
    pub async fn start_with(
        row: &Row<F>,
        secret: Option<&str>,
        keys: &str,
        limits: &str,
        prepare: impl FnOnce(&F),
    ) -> Self {
        let fake = (row.start)().await;
        prepare(&fake);
        let dir = tempfile::tempdir().unwrap();
        let provider = (row.provider_toml)(&fake, secret, keys, dir.path());
        let toml = format!(
            "[dispatch]\nretry_max_elapsed = \"20s\"\n{provider}\n[providers.limits]\n{}\n{limits}\n",
            row.limits
        );
        let app = spawn_app(config(&toml)).await;
        Running {
            app,
            fake,
            _dir: dir,
        }
    }

    /// Creates a purge and waits until it is terminal.
    pub async fn create(&self, req: CreatePurgeRequest) -> pb::Purge {
        let mut client = self.app.client.clone();
        let created = client.create_purge(req).await.unwrap().into_inner();
        wait_terminal(&self.app.client, &created.id, Duration::from_secs(30)).await
    }
}

/// Every kind the provider can purge, with each action it takes, succeeds end to end.
pub async fn every_kind_and_action<F>(row: &Row<F>) {
    let run = Running::start(row, None, "", "").await;
    let mut done = Vec::new();
    for &kind in row.kinds {
        for action in [PurgeAction::Invalidate, PurgeAction::Delete] {
            if row.refused_actions.contains(&(kind, action)) {
                continue;
            }
            let mut req = (row.sample)(kind);
            req.action = action as i32;
            let purge = run.create(req).await;
            assert_eq!(
                purge.state(),
                PurgeState::Succeeded,
                "{} {kind:?} {action:?}: {purge:?}",
                row.name
            );
            assert!(
                !purge.tasks.is_empty()
                    && purge
                        .tasks
                        .iter()
                        .all(|t| t.request_id.starts_with(row.request_ids)),
                "{:?}",
                purge.tasks
            );
            done.push(Done {
                kind,
                action,
                purge,
            });
        }
    }
    (row.check_sent)(&run, &done);
}

/// A kind the provider cannot purge is refused with INVALID_ARGUMENT naming the kind and the
/// provider, and so is each of its own rules; nothing reaches the provider.
pub async fn refused_up_front<F>(row: &Row<F>) {
    let run = Running::start(row, None, "", "").await;
    let mut client = run.app.client.clone();
    let mut unsupported = (row.sample)(PurgeKind::Url);
    unsupported.kind = row.unsupported as i32;
    let err = client.create_purge(unsupported).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let kind = row
        .unsupported
        .as_str_name()
        .trim_start_matches("PURGE_KIND_");
    assert!(
        err.message().contains(&format!("cannot purge {kind}")),
        "{err:?}"
    );
    assert!(
        violations(&err).iter().any(|(field, why)| field == "kind"
            && why.contains(&format!("provider {:?} cannot purge {kind}", row.name))),
        "{err:?}"
    );
    for refusal in (row.refusals)() {
        let shown = format!("{:?}", refusal.request);
        let err = client.create_purge(refusal.request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{shown}");
        let v = violations(&err);
        assert_eq!(v.len(), 1, "{shown}: {v:?}");
        assert_eq!(v[0].0, refusal.field, "{shown}: {v:?}");
        assert!(v[0].1.contains(&refusal.says), "{shown}: {v:?}");
        assert!(v[0].1.contains(row.name), "names the provider: {v:?}");
    }
    assert_eq!((row.attempts)(&run), 0, "nothing reached {}", row.name);
}

/// A fatal provider error (wrong keys, a refused batch) fails the targets at once, with the
/// provider's reason, without retrying and without showing a secret.
pub async fn fatal_error<F>(row: &Row<F>) {
    let fatal = &row.fatal;
    let run = Running::start(row, fatal.wrong_secret, fatal.keys, "").await;
    (fatal.fault)(&run.fake);
    let req = (fatal.request)();
    let total = req.targets.len().max(1);
    let done = run.create(req).await;
    assert_eq!(done.state(), PurgeState::Failed, "{done:?}");
    let mut failed: Vec<&str> = done.failures.iter().map(|f| f.target.as_str()).collect();
    failed.sort();
    assert_eq!(failed, fatal.failing, "{:?}", done.failures);
    assert!(
        done.failures
            .iter()
            .all(|f| f.provider == row.name && f.reason.contains(fatal.reason)),
        "{:?}",
        done.failures
    );
    let failing = fatal.failing.len();
    assert_eq!(
        done.progress.unwrap().succeeded as usize,
        total - failing,
        "{done:?}"
    );
    assert_eq!(done.error, format!("{failing} of {total} targets failed"));
    if let Some(secret) = fatal.wrong_secret {
        assert!(!format!("{done:?}").contains(secret));
    }
    assert_eq!((row.attempts)(&run), 1, "a fatal error is not retried");
}

/// A URL purge over the configured per-call cap goes out in calls within the cap.
pub async fn over_the_cap<F>(row: &Row<F>) {
    let run = Running::start(row, None, "", "max_per_call = { URL = 2 }").await;
    let mut req = (row.sample)(PurgeKind::Url);
    req.targets = (0..5)
        .map(|i| format!("https://www.example.com/cap/{i}.js"))
        .collect();
    let done = run.create(req).await;
    assert_eq!(done.state(), PurgeState::Succeeded, "{done:?}");
    let sizes = (row.sent)(&run);
    assert!(sizes.iter().all(|&n| n <= 2), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 5, "{sizes:?}");
    assert!(done.tasks.len() >= 3, "{:?}", done.tasks);
}

/// A quota the provider reports used up is refused at CreatePurge with RESOURCE_EXHAUSTED,
/// nothing sent; a quota error the service could not foresee fails the targets with the
/// provider's reason, without retrying, and later purges of that kind are refused at once.
pub async fn quota<F>(row: &Row<F>) {
    use tonic_types::StatusExt;
    let q = row.quota.as_ref().expect("the row has quotas");

    let run = Running::start_with(row, None, "", "", q.exhaust).await;
    eventually(Duration::from_secs(10), "the quota was read", || {
        let read = (q.read)(&run.fake);
        async move { read.then_some(()) }
    })
    .await;
    let err = refused_eventually(&run.app.client, (q.exhausted)()).await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(reason(&err), "PROVIDER_QUOTA_EXHAUSTED");
    assert!(err.get_error_details().quota_failure().is_some());
    assert_eq!((row.attempts)(&run), 0, "nothing was sent");

    let run = Running::start(row, None, "", "").await;
    eventually(Duration::from_secs(10), "the quota was read", || {
        let read = (q.read)(&run.fake);
        async move { read.then_some(()) }
    })
    .await;
    (q.refuse)(&run.fake);
    let done = run.create((q.refused)()).await;
    assert_eq!(done.state(), PurgeState::Failed, "{done:?}");
    assert!(
        !done.failures.is_empty() && done.failures.iter().all(|f| f.reason.contains(q.reason)),
        "{:?}",
        done.failures
    );
    assert_eq!((row.attempts)(&run), 1, "quota errors are not retried");
    let err = run
        .app
        .client
        .clone()
        .create_purge((q.refused)())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    if let Some(unaffected) = q.unaffected {
        let other = run.create(unaffected()).await;
        assert_eq!(other.state(), PurgeState::Succeeded, "{other:?}");
    }
}

/// One module of tests per provider row, one test per scenario.
macro_rules! scenarios {
    ($($provider:ident => $row:expr),+ $(,)?) => {$(
        mod $provider {
            #[tokio::test]
            async fn every_kind_and_action_succeeds() {
                super::every_kind_and_action(&$row).await
            }

            #[tokio::test]
            async fn kinds_and_rules_it_cannot_do_are_refused_up_front() {
                super::refused_up_front(&$row).await
            }

            #[tokio::test]
            async fn a_fatal_provider_error_fails_the_targets_with_its_reason() {
                super::fatal_error(&$row).await
            }

            #[tokio::test]
            async fn a_batch_over_the_cap_is_split() {
                super::over_the_cap(&$row).await
            }
        }
    )+};
}

/// The quota scenario, for the rows with quotas.
macro_rules! quota_scenarios {
    ($($provider:ident => $row:expr),+ $(,)?) => {$(
        mod $provider {
            #[tokio::test]
            async fn an_exhausted_quota_fails_fast_and_a_quota_error_fails_the_targets() {
                super::super::quota(&$row).await
            }
        }
    )+};
}

scenarios! {
    edgeone => super::table::edgeone(),
    cdnpro => super::table::cdnpro(),
    cdnetworks => super::table::content_management(),
    sandbox => super::table::sandbox(),
}

mod quota {
    quota_scenarios! {
        edgeone => super::super::table::edgeone(),
        cdnpro => super::super::table::cdnpro(),
        cdnetworks => super::super::table::content_management(),
    }
}

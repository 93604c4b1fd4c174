//! ListPurges on the memory backend, one Redis and a Redis Cluster: filters, newest first,
//! paging edges, page tokens bound to the caller and the filter, callers seeing only their own.

use std::time::Duration;

use purge_service::pb::{self, PurgeKind, PurgeState};
use tonic::Code;

use crate::redis_server::{RedisCluster, RedisServer, RedisTarget};
use crate::support::{Client, TestApp, config, request, spawn_app, violations, wait_terminal};

/// Two callers whose tokens are files in `dir`.
fn callers(dir: &std::path::Path) -> String {
    let web = dir.join("web");
    let ops = dir.join("ops");
    std::fs::write(&web, "web-token").unwrap();
    std::fs::write(&ops, "ops-token").unwrap();
    format!(
        "[[providers]]\nname = \"sandbox\"\ntype = \"sandbox\"\ndelay = \"10ms\"\nfail_pattern = \"/broken/\"\n\
         [[providers]]\nname = \"other\"\ntype = \"sandbox\"\ndelay = \"10ms\"\n\
         [[callers]]\nname = \"web\"\ntoken_file = {web:?}\n[[callers]]\nname = \"ops\"\ntoken_file = {ops:?}\n"
    )
}

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn list(
    client: &Client,
    token: &str,
    filter: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListPurgesResponse, tonic::Status> {
    client
        .clone()
        .list_purges(authed(
            token,
            pb::ListPurgesRequest {
                filter: filter.into(),
                page_size,
                page_token: page_token.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// Every page of a listing, following the tokens.
async fn all_pages(client: &Client, token: &str, filter: &str, size: i32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut next = String::new();
    loop {
        let page = list(client, token, filter, size, &next).await.unwrap();
        pages.push(page.purges.iter().map(|p| p.id.clone()).collect());
        if page.next_page_token.is_empty() {
            return pages;
        }
        next = page.next_page_token;
    }
}

/// Runs the listing scenario against `apps` (one, or several replicas on one backend: a
/// token from one works on another).
async fn scenario(apps: &[TestApp]) {
    let c = |i: usize| apps[i % apps.len()].client.clone();
    // Nothing yet: an empty page and no token.
    let empty = list(&c(0), "web-token", "", 0, "").await.unwrap();
    assert!(empty.purges.is_empty() && empty.next_page_token.is_empty());

    let mut web = Vec::new();
    for i in 0..7 {
        let mut req = request(
            if i == 6 { "other" } else { "sandbox" },
            if i == 5 {
                PurgeKind::Prefix
            } else {
                PurgeKind::Url
            },
            &[&if i % 3 == 0 {
                format!("https://w.example/broken/{i}/")
            } else {
                format!("https://w.example/{i}/")
            }],
        );
        req.labels.insert(
            "ticket".into(),
            if i < 4 {
                "OPS-42".into()
            } else {
                "OPS-7".into()
            },
        );
        let p = c(i)
            .create_purge(authed("web-token", req))
            .await
            .unwrap()
            .into_inner();
        web.push(p.id);
    }
    let ops = c(1)
        .create_purge(authed(
            "ops-token",
            request("sandbox", PurgeKind::Url, &["https://o.example/x"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    for id in web.iter().chain([&ops]) {
        // GetPurge needs the owner's token: wait through the owner.
        let token = if *id == ops { "ops-token" } else { "web-token" };
        let client = c(0);
        crate::support::eventually(Duration::from_secs(20), "purge finished", || {
            let req = authed(token, pb::GetPurgeRequest { id: id.clone() });
            let mut client = client.clone();
            async move {
                let p = client.get_purge(req).await.ok()?.into_inner();
                crate::support::is_terminal(&p).then_some(())
            }
        })
        .await;
    }
    let newest_first: Vec<String> = web.iter().rev().cloned().collect();

    // Own purges only, newest first; pages of 3: 3, 3, 1, the last without a token.
    let pages = all_pages(&c(0), "web-token", "", 3).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
    assert_eq!(pages.concat(), newest_first);
    // A page size that divides the listing: the last full page has a token, then an empty one
    // would be wrong: the listing ends with the last match.
    let pages = all_pages(&c(1), "web-token", "", 7).await;
    assert_eq!(pages, vec![newest_first.clone()]);
    assert_eq!(
        all_pages(&c(0), "ops-token", "", 0).await,
        vec![vec![ops.clone()]]
    );

    // Filters.
    let ids = |pages: Vec<Vec<String>>| pages.concat();
    let pick = |is: &[usize]| is.iter().rev().map(|i| web[*i].clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(all_pages(&c(0), "web-token", "state = FAILED", 2).await),
        pick(&[0, 3])
    );
    assert_eq!(
        ids(all_pages(&c(0), "web-token", "state = SUCCEEDED", 2).await),
        pick(&[1, 2, 4, 5, 6])
    );
    assert_eq!(
        ids(all_pages(&c(0), "web-token", "labels.ticket = \"OPS-42\"", 2).await),
        pick(&[0, 1, 2, 3])
    );
    assert_eq!(
        ids(all_pages(&c(0), "web-token", "provider = other", 0).await),
        pick(&[6])
    );
    assert_eq!(
        ids(all_pages(&c(0), "web-token", "kind = PREFIX", 0).await),
        pick(&[5])
    );
    assert_eq!(
        ids(all_pages(&c(0), "web-token", "state = SUCCEEDED AND labels.ticket = \"OPS-42\" AND create_time >= \"2026-01-01T00:00:00Z\"", 1).await),
        pick(&[1, 2])
    );
    assert!(
        ids(all_pages(
            &c(0),
            "web-token",
            "create_time < \"2000-01-01T00:00:00Z\"",
            0
        )
        .await)
        .is_empty()
    );

    // Page tokens: bound to the caller and the filter.
    let first = list(&c(0), "web-token", "labels.ticket = OPS-42", 1, "")
        .await
        .unwrap();
    assert_eq!(first.purges.len(), 1);
    let token = first.next_page_token;
    let second = list(&c(1), "web-token", "labels.ticket = OPS-42", 1, &token)
        .await
        .unwrap();
    assert_eq!(second.purges[0].id, web[2]);
    for (who, filter) in [
        ("ops-token", "labels.ticket = OPS-42"),
        ("web-token", "labels.ticket = OPS-7"),
        ("web-token", ""),
    ] {
        let err = list(&c(0), who, filter, 1, &token).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{who} {filter}");
        assert_eq!(violations(&err)[0].0, "page_token");
    }
    let err = list(&c(0), "web-token", "", 1, "forged").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Page size bounds: negative refused, above the maximum lowered to it.
    let err = list(&c(0), "web-token", "", -1, "").await.unwrap_err();
    assert_eq!(
        violations(&err),
        vec![(
            "page_size".to_owned(),
            "must not be negative, got -1".to_owned()
        )]
    );
    assert_eq!(
        list(&c(0), "web-token", "", 5000, "")
            .await
            .unwrap()
            .purges
            .len(),
        7
    );
    // A bad filter names itself and the token.
    let err = list(&c(0), "web-token", "state = DONE", 0, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        violations(&err)[0].1.contains("\"DONE\" is not a state"),
        "{err:?}"
    );
}

#[tokio::test]
async fn listing_on_the_memory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(config(&callers(dir.path()))).await;
    scenario(std::slice::from_ref(&app)).await;
}

#[tokio::test]
async fn listing_on_redis_across_two_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start();
    let target = RedisTarget::node(&server);
    let apps = vec![
        spawn_app(target.config(&callers(dir.path()))).await,
        spawn_app(target.config(&callers(dir.path()))).await,
    ];
    scenario(&apps).await;
    // The indexes are sorted sets under the shards' hash tags; nothing else was scanned.
    let keys: Vec<String> =
        server.query(redis::cmd("KEYS").arg(format!("{{{}:*:idx:*", target.prefix)));
    assert!(
        !keys.is_empty()
            && keys
                .iter()
                .all(|k| k.starts_with(&format!("{{{}:", target.prefix))),
        "{keys:?}"
    );
}

#[tokio::test]
async fn listing_on_a_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start();
    let target = RedisTarget::cluster(&cluster);
    let app = spawn_app(target.config(&callers(dir.path()))).await;
    scenario(std::slice::from_ref(&app)).await;
}

#[tokio::test]
async fn anonymous_callers_list_every_purge() {
    let app = spawn_app(crate::support::sandbox_config()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let p = app
            .client
            .clone()
            .create_purge(request(
                "sandbox",
                PurgeKind::Url,
                &[&format!("https://a.example/{i}")],
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push(p.id);
    }
    for id in &ids {
        wait_terminal(&app.client, id, Duration::from_secs(10)).await;
    }
    let page = app
        .client
        .clone()
        .list_purges(pb::ListPurgesRequest {
            filter: "state = SUCCEEDED".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<String> = page.purges.iter().map(|p| p.id.clone()).collect();
    ids.reverse();
    assert_eq!(got, ids);
    assert!(
        page.purges
            .iter()
            .all(|p| p.state() == PurgeState::Succeeded)
    );
}

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn key(k: &str) -> Key {
    Key {
        tenant: Some("t".into()),
        route: "chat".into(),
        key: k.into(),
    }
}

/// The pipeline's use: begin, and as leader make the upstream call.
async fn call(
    store: &Idempotency<String>,
    k: &str,
    upstream: &AtomicUsize,
    fail: bool,
) -> Result<String, &'static str> {
    match store.begin(key(k), [0; 32], Instant::now()).await {
        Begin::Replay(v) => Ok(v),
        Begin::Conflict => Err("conflict"),
        Begin::Leader(ticket) => {
            let n = upstream.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if fail {
                drop(ticket);
                return Err("upstream failed");
            }
            let v = format!("response #{n}");
            ticket.complete(v.clone(), Instant::now());
            Ok(v)
        }
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_repeats_make_one_upstream_call() {
    let store = Idempotency::new(Duration::from_secs(60), 100);
    let upstream = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (store, upstream) = (store.clone(), upstream.clone());
        tasks.push(tokio::spawn(async move {
            call(&store, "k1", &upstream, false).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), Ok("response #1".to_owned()));
    }
    assert_eq!(upstream.load(Ordering::SeqCst), 1);
    // A later repeat within the TTL replays; after it, calls again.
    assert_eq!(
        call(&store, "k1", &upstream, false).await,
        Ok("response #1".to_owned())
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        call(&store, "k1", &upstream, false).await,
        Ok("response #2".to_owned())
    );
    // Another key is independent.
    assert_eq!(
        call(&store, "k2", &upstream, false).await,
        Ok("response #3".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_attempt_frees_the_key() {
    let store = Idempotency::new(Duration::from_secs(60), 100);
    let upstream = Arc::new(AtomicUsize::new(0));
    let first = {
        let (store, upstream) = (store.clone(), upstream.clone());
        tokio::spawn(async move { call(&store, "k", &upstream, true).await })
    };
    tokio::task::yield_now().await;
    let second = {
        let (store, upstream) = (store.clone(), upstream.clone());
        tokio::spawn(async move { call(&store, "k", &upstream, false).await })
    };
    assert_eq!(first.await.expect("task"), Err("upstream failed"));
    // The waiter took over and made the call itself.
    assert_eq!(second.await.expect("task"), Ok("response #2".to_owned()));
    assert_eq!(upstream.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_frees_the_key() {
    let store = Idempotency::new(Duration::from_secs(60), 100);
    let upstream = Arc::new(AtomicUsize::new(0));
    let leader = {
        let (store, upstream) = (store.clone(), upstream.clone());
        tokio::spawn(async move { call(&store, "k", &upstream, false).await })
    };
    tokio::task::yield_now().await;
    leader.abort();
    let _ = leader.await;
    assert_eq!(
        call(&store, "k", &upstream, false).await,
        Ok("response #2".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_reused_for_another_body_conflicts() {
    let store: Idempotency<String> = Idempotency::new(Duration::from_secs(60), 100);
    let Begin::Leader(t) = store.begin(key("k"), [1; 32], Instant::now()).await else {
        panic!("leader");
    };
    assert!(matches!(
        store.begin(key("k"), [2; 32], Instant::now()).await,
        Begin::Conflict
    ));
    t.complete("r".into(), Instant::now());
    assert!(matches!(
        store.begin(key("k"), [2; 32], Instant::now()).await,
        Begin::Conflict
    ));
    let other_tenant = Key {
        tenant: Some("u".into()),
        ..key("k")
    };
    assert!(matches!(
        store.begin(other_tenant, [2; 32], Instant::now()).await,
        Begin::Leader(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn bounded_in_entries() {
    let store: Idempotency<u32> = Idempotency::new(Duration::from_secs(60), 2);
    for i in 0..5u32 {
        let Begin::Leader(t) = store
            .begin(key(&i.to_string()), [0; 32], Instant::now())
            .await
        else {
            panic!("leader");
        };
        t.complete(i, Instant::now());
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert!(lock(&store.inner).slots.len() <= 3);
}

#[test]
fn fingerprint_ignores_field_order_but_not_content() {
    let a: crate::openai::ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "chat", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]
    }))
    .expect("request");
    let b: crate::openai::ChatRequest = serde_json::from_value(serde_json::json!({
        "messages": [{"content": "hi", "role": "user"}], "temperature": 0, "model": "chat"
    }))
    .expect("request");
    assert_eq!(fingerprint(&a), fingerprint(&b));
    let mut c = a.clone();
    c.temperature = Some(1.0);
    assert_ne!(fingerprint(&a), fingerprint(&c));
}

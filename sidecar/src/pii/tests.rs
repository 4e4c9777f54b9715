use super::*;

fn scrubber(mode: PiiMode) -> Scrubber {
    Scrubber::new(&PiiSpec {
        mode,
        detectors: PiiDetector::all(),
    })
    .expect("pattern compiles")
}

/// (text, the kinds expected in it, in order). Empty = must not fire.
const TABLE: &[(&str, &[PiiDetector])] = {
    use PiiDetector::*;
    &[
        // email
        ("write to jane.doe+news@example.co.uk today", &[Email]),
        ("ops@sub.example.com", &[Email]),
        ("ping @jane on slack", &[]),
        ("user@localhost is not routable", &[]),
        ("the decorator @app.route('/x')", &[]),
        // phone
        ("call +1 415 555 2671", &[Phone]),
        ("call +44 20 7946 0958 please", &[Phone]),
        ("+49 (30) 123456 is Berlin", &[Phone]),
        ("US (415) 555-2671", &[Phone]),
        ("US 415-555-2671", &[Phone]),
        ("US 415.555.2671", &[Phone]),
        ("order #1234567890 shipped", &[]),
        ("at 2024-01-15 12:30:45", &[]),
        ("timestamp 1700000000", &[]),
        ("area code can't start with 1: 123-456-7890", &[]),
        // credit card
        ("card 4111 1111 1111 1111 exp 12/27", &[CreditCard]),
        ("card 4111-1111-1111-1111", &[CreditCard]),
        ("amex 378282246310005", &[CreditCard]),
        ("mc 5555555555554444", &[CreditCard]),
        ("luhn fails 4111 1111 1111 1112", &[]),
        ("order number 1234567812345678", &[]),
        ("unix ms 1700000000000", &[]),
        ("zeros 0000 0000 0000 0000", &[]),
        ("twelve digits 411111111111", &[]),
        // ssn
        ("ssn 123-45-6789", &[Ssn]),
        ("ssn 078-05-1120", &[Ssn]),
        ("never issued 000-12-3456", &[]),
        ("never issued 666-12-3456", &[]),
        ("never issued 912-12-3456", &[]),
        ("group zero 123-00-4567", &[]),
        ("serial zero 123-45-0000", &[]),
        ("date 2024-01-1500", &[]),
        // ip
        ("server 192.168.1.20 is down", &[IpAddress]),
        ("dns 8.8.8.8", &[IpAddress]),
        ("v6 2001:db8::8a2e:370:7334 up", &[IpAddress]),
        ("loopback ::1 only", &[IpAddress]),
        ("ping fe80::1ff:fe23:4567:890a.", &[IpAddress]),
        ("server 10.0.0.1.", &[IpAddress]),
        ("fe80::1ff:fe23:4567:890a", &[IpAddress]),
        ("octet too big 256.1.1.1", &[]),
        ("version 1.2.3 released", &[]),
        ("oid 1.3.6.1.4.1", &[]),
        ("v1.2.3.4", &[]),
        ("meet at 12:30:45", &[]),
        ("mac 00:1A:2B:3C:4D:5E", &[]),
        ("rust path std::net::Ipv6Addr", &[]),
        // secrets
        ("key sk-abc123DEF456ghi789JKL012", &[Secret]),
        ("key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", &[Secret]),
        ("aws AKIAIOSFODNN7EXAMPLE", &[Secret]),
        ("gh ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", &[Secret]),
        ("slack xoxb-1234567890-abcdef", &[Secret]),
        (
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc123",
            &[Secret],
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", &[Secret]),
        ("-----BEGIN PRIVATE KEY-----", &[Secret]),
        ("use sk-learn-compatible-estimators-here", &[]),
        ("the task-abc123def456ghi789jkl ran", &[]),
        ("AKIA is a prefix", &[]),
        ("-----BEGIN PUBLIC KEY-----", &[]),
        ("Bearer of bad news", &[]),
        // non-ASCII text around
        ("Grüße aus München, Tel. +49 30 1234567 — danke", &[Phone]),
        ("日本語のテキスト 192.168.0.1 です", &[IpAddress]),
        ("١٢٣-٤٥-٦٧٨٩ are Arabic-Indic digits", &[]),
        // several in one text, in order
        (
            "mail a@b.io, call 415-555-2671, card 4242 4242 4242 4242",
            &[Email, Phone, CreditCard],
        ),
    ]
};

#[test]
fn detector_table() {
    let s = scrubber(PiiMode::Redact);
    let mut failures = Vec::new();
    for (text, want) in TABLE {
        let got: Vec<_> = s.find(text).into_iter().map(|f| f.kind).collect();
        if got != *want {
            failures.push(format!("{text:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn redact_writes_typed_placeholders() {
    let s = scrubber(PiiMode::Redact);
    let mut counts = Redactions::new();
    let out = s.redact(
        "mail jane@example.com or 415-555-2671, key sk-abc123DEF456ghi789JKL012.",
        &mut counts,
    );
    assert_eq!(out, "mail [EMAIL] or [PHONE], key [SECRET].");
    assert_eq!(counts.get(&PiiDetector::Email), Some(&1));
    let clean = "nothing to see";
    assert!(matches!(s.redact(clean, &mut counts), Cow::Borrowed(_)));
}

#[test]
fn only_enabled_detectors_run() {
    let s = Scrubber::new(&PiiSpec {
        mode: PiiMode::Redact,
        detectors: vec![PiiDetector::Email],
    })
    .expect("compiles");
    let kinds: Vec<_> = s
        .find("a@b.io 415-555-2671")
        .into_iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, [PiiDetector::Email]);
}

fn request() -> ChatRequest {
    serde_json::from_value(serde_json::json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "Support bot."},
            {"role": "user", "content": [
                {"type": "text", "text": "My card is 4111 1111 1111 1111"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "lookup", "arguments": "{\"email\":\"jane@example.com\"}"}}
            ]},
            {"role": "user", "content": "SSN 123-45-6789"}
        ]
    }))
    .expect("request")
}

#[test]
fn apply_redacts_every_message_text() {
    let mut req = request();
    let counts = scrubber(PiiMode::Redact).apply(&mut req).expect("redact");
    let body = serde_json::to_string(&req).expect("json");
    assert!(body.contains("My card is [CREDIT_CARD]"), "{body}");
    assert!(body.contains(r#"{\"email\":\"[EMAIL]\"}"#), "{body}");
    assert!(body.contains("SSN [SSN]"), "{body}");
    assert!(body.contains("https://x/y.png"));
    assert_eq!(counts.values().sum::<usize>(), 3);
}

#[test]
fn block_names_categories_never_values() {
    let mut req = request();
    let before = req.clone();
    let err = scrubber(PiiMode::Block)
        .apply(&mut req)
        .expect_err("blocked");
    assert_eq!(req, before);
    let msg = err.to_string();
    assert_eq!(
        msg,
        "the request contains personal data or secrets (email, credit-card, ssn)"
    );
    assert!(!msg.contains("4111"));
    let mut clean: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "chat", "messages": [{"role": "user", "content": "hello"}]
    }))
    .expect("request");
    assert!(scrubber(PiiMode::Block).apply(&mut clean).is_ok());
}

proptest::proptest! {
    /// Any text: findings are ordered, disjoint, on char boundaries, and
    /// redacting replaces exactly them.
    #[test]
    fn findings_are_well_formed(text in "(\\PC|[0-9 .:@+-]){0,200}") {
        let s = scrubber(PiiMode::Redact);
        let found = s.find(&text);
        let mut end = 0;
        for f in &found {
            proptest::prop_assert!(f.range.start >= end);
            proptest::prop_assert!(text.is_char_boundary(f.range.start) && text.is_char_boundary(f.range.end));
            end = f.range.end;
        }
        let mut counts = Redactions::new();
        let out = s.redact(&text, &mut counts);
        proptest::prop_assert_eq!(counts.values().sum::<usize>(), found.len());
        let kept: usize = text.len() - found.iter().map(|f| f.range.len()).sum::<usize>();
        let placeholders: usize = found.iter().map(|f| placeholder(f.kind).len()).sum();
        proptest::prop_assert_eq!(out.len(), kept + placeholders);
    }
}

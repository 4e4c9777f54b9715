//! Bedrock adapter: golden request (SigV4 signed at a fixed time),
//! response, event-stream and error tables.

use http::HeaderMap;
use proptest::prelude::*;
use sluice_crds::{FailureClass, ProviderType};
use sluice_sidecar::openai::ChatRequest;
use sluice_sidecar::provider::bedrock::eventstream::Frame;
use sluice_sidecar::provider::bedrock::{self, BedrockStream};
use sluice_sidecar::provider::{Endpoint, StreamDecoder, StreamEvent};

use crate::golden::{self, CREATED, now};

const CREDENTIAL: &str =
    "AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY:FwoGZXIvYXdzEXAMPLETOKEN";

fn endpoint() -> Endpoint {
    let mut ep = golden::endpoint(ProviderType::Bedrock, "", CREDENTIAL);
    ep.region = Some("us-east-1".into());
    ep
}

#[test]
fn request_translation_and_signature() {
    let req: ChatRequest =
        serde_json::from_value(golden::read_json("bedrock/request_full.in.json")).expect("request");
    let model = "anthropic.claude-3-5-sonnet-20240620-v1:0";
    let up = bedrock::build_chat(&endpoint(), &req, model, false, now()).expect("builds");
    assert_eq!(
        up.url,
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    // The signature is deterministic for a fixed clock, key and body.
    golden::check_json(
        "bedrock/request_full.out.json",
        &golden::request_json(&up, true),
    );

    let auth = up.headers["authorization"].to_str().expect("ascii");
    assert!(up.headers["authorization"].is_sensitive());
    assert!(up.headers["x-amz-security-token"].is_sensitive());
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request, SignedHeaders="),
        "{auth}"
    );
    let signed = auth
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("signed headers");
    for h in ["content-type", "host", "x-amz-date", "x-amz-security-token"] {
        assert!(
            signed.split(';').any(|s| s == h),
            "{h} not signed: {signed}"
        );
    }
    let sig = auth.rsplit("Signature=").next().expect("signature");
    assert_eq!(sig.len(), 64);
    assert!(sig.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(up.headers["x-amz-date"], "20231114T221320Z");

    let up = bedrock::build_chat(&endpoint(), &req, model, true, now()).expect("builds");
    assert!(up.url.ends_with("/converse-stream"));
    assert_eq!(up.headers["accept"], "application/vnd.amazon.eventstream");
}

#[test]
fn bad_credentials_and_urls_fail_cleanly() {
    let req: ChatRequest =
        serde_json::from_value(golden::read_json("bedrock/request_full.in.json")).expect("request");
    for bad in ["", "onlyone", ":secret", "AKID:"] {
        let mut ep = endpoint();
        ep.credential = Some(sluice_crds::snapshot::Credential::new(bad));
        let f = bedrock::build_chat(&ep, &req, "m", false, now()).expect_err("refused");
        assert_eq!(f.class, FailureClass::Auth, "{bad:?}");
        assert!(!f.message.contains("secret"));
    }
    let mut ep = endpoint();
    ep.base_url = "not a url".into();
    let f = bedrock::build_chat(&ep, &req, "m", false, now()).expect_err("refused");
    assert_eq!(f.class, FailureClass::BadRequest);
    let mut ep = endpoint();
    ep.region = None;
    assert!(bedrock::build_chat(&ep, &req, "m", false, now()).is_err());
}

#[test]
fn image_urls_are_refused() {
    let req: ChatRequest = serde_json::from_value(serde_json::json!({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
    ]}))
    .expect("request");
    let f = bedrock::to_converse_request(&req).expect_err("refused");
    assert_eq!(f.class, FailureClass::BadRequest);
}

#[test]
fn response_translation() {
    for name in [
        "response_text",
        "response_tool_use",
        "response_max_tokens",
        "response_guardrail",
        "response_content_filtered",
    ] {
        let body = golden::read(&format!("bedrock/{name}.in.json"));
        let out = match bedrock::parse_chat(
            200,
            &HeaderMap::new(),
            body.as_bytes(),
            "chatcmpl-req-1",
            "m",
            CREATED,
            now(),
        ) {
            Ok(r) => serde_json::to_value(r).expect("serializes"),
            Err(f) => golden::failure_json(&f),
        };
        golden::check_json(&format!("bedrock/{name}.out.json"), &out);
    }
}

/// Encodes a list of `{headers, payload}` as event-stream frames.
fn frames(name: &str) -> Vec<u8> {
    let list = golden::read_json(&format!("bedrock/{name}.events.json"));
    let mut out = Vec::new();
    for f in list.as_array().expect("frames") {
        let headers: Vec<(String, String)> = f["headers"]
            .as_object()
            .expect("headers")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
            .collect();
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        out.extend(Frame::encode(&refs, f["payload"].to_string().as_bytes()));
    }
    out
}

fn decoder() -> Box<dyn StreamDecoder> {
    Box::new(BedrockStream::new(&golden::ctx()))
}

#[test]
fn stream_translation_in_any_split() {
    for name in [
        "stream_tool_use",
        "stream_throttled",
        "stream_model_error",
        "stream_unavailable",
        "stream_validation",
        "stream_cut",
        "stream_guardrail",
    ] {
        let bytes = frames(name);
        let events = golden::decode_every_way(&decoder, &bytes);
        golden::check(
            &format!("bedrock/{name}.out.jsonl"),
            &golden::events_text(&events),
        );
    }
    let events = golden::decode_split(decoder(), &frames("stream_tool_use"), &[]);
    assert!(events[0].as_ref().expect("ok").is_token());
    assert!(matches!(events.last(), Some(Ok(StreamEvent::Done))));
}

#[test]
fn a_corrupted_frame_is_malformed() {
    let mut bytes = frames("stream_tool_use");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let events = golden::decode_split(decoder(), &bytes, &[]);
    let last = events.last().expect("events").as_ref().expect_err("fails");
    assert_eq!(last.class, FailureClass::Malformed);
}

#[test]
fn a_stream_cut_mid_frame_is_interrupted() {
    let bytes = frames("stream_tool_use");
    let events = golden::decode_split(decoder(), &bytes[..bytes.len() - 3], &[]);
    let last = events.last().expect("events").as_ref().expect_err("fails");
    assert_eq!(last.class, FailureClass::StreamInterrupted);
}

#[test]
fn error_classification() {
    crate::anthropic::error_table("bedrock/errors", &|s, h, b| {
        bedrock::classify(s, h, b, now())
    });
}

proptest! {
    #[test]
    fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut d = BedrockStream::new(&golden::ctx());
        for c in &chunks {
            let _ = d.feed(c);
        }
        let _ = d.finish();
    }

    /// Valid frames around garbage payloads and headers: still no panic.
    #[test]
    fn decoder_never_panics_on_valid_frames(frames in proptest::collection::vec(
        (prop_oneof![Just("event".to_owned()), Just("exception".to_owned()), Just("error".to_owned()), "[a-z]{0,8}"],
         prop_oneof![Just("contentBlockDelta".to_owned()), Just("contentBlockStart".to_owned()), Just("messageStop".to_owned()), Just("metadata".to_owned()), "[a-zA-Z]{0,12}"],
         proptest::collection::vec(any::<u8>(), 0..80)), 0..10)) {
        let mut bytes = Vec::new();
        for (mt, et, payload) in &frames {
            bytes.extend(Frame::encode(&[(":message-type", mt), (":event-type", et), (":exception-type", et)], payload));
        }
        let mut d = BedrockStream::new(&golden::ctx());
        let _ = d.feed(&bytes);
        let _ = d.finish();
    }

    #[test]
    fn classify_never_panics(status in 0u16..1000, body in proptest::collection::vec(any::<u8>(), 0..200), kind in "[ -~]{0,40}") {
        let mut h = HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&kind) {
            h.insert("x-amzn-errortype", v);
        }
        let _ = bedrock::classify(status, &h, &body, now());
    }
}

/// SigV4 computed here from the AWS specification, independently of the
/// signing crate: the canonical URI double-encodes the path (Bedrock is not
/// S3), the payload hash is of the exact body sent.
mod reference_sigv4 {
    use sha2::{Digest, Sha256};

    use super::*;

    fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let ih = Sha256::new()
            .chain_update(&inner)
            .chain_update(msg)
            .finalize();
        Sha256::new()
            .chain_update(&outer)
            .chain_update(ih)
            .finalize()
            .to_vec()
    }

    #[test]
    fn the_signature_matches_the_specification() {
        let req: ChatRequest =
            serde_json::from_value(golden::read_json("bedrock/request_full.in.json"))
                .expect("request");
        let model = "anthropic.claude-3-5-sonnet-20240620-v1:0";
        let up = bedrock::build_chat(&endpoint(), &req, model, false, now()).expect("builds");
        let header = |n: &str| up.headers[n].to_str().expect("ascii").to_owned();
        let (_, secret_and_token) = CREDENTIAL.split_once(':').expect("key");
        let (secret, token) = secret_and_token.split_once(':').expect("token");
        let canonical = format!(
            "POST\n/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse\n\n\
             accept:{}\ncontent-type:{}\nhost:bedrock-runtime.us-east-1.amazonaws.com\n\
             x-amz-date:20231114T221320Z\nx-amz-security-token:{token}\n\n\
             accept;content-type;host;x-amz-date;x-amz-security-token\n{}",
            header("accept"),
            header("content-type"),
            hex::encode(Sha256::digest(&up.body)),
        );
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n20231114T221320Z\n20231114/us-east-1/bedrock/aws4_request\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(format!("AWS4{secret}").as_bytes(), b"20231114");
        for part in ["us-east-1", "bedrock", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let expected = hex::encode(hmac(&key, to_sign.as_bytes()));
        let auth = header("authorization");
        assert!(
            auth.ends_with(&format!("Signature={expected}")),
            "{auth}\nexpected {expected}"
        );
    }
}

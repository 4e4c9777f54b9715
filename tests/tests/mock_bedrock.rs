//! The Bedrock mock over loopback: Converse JSON, ConverseStream decoded
//! frame by frame from the AWS event-stream framing with both CRCs checked,
//! exception frames mid-stream, SigV4 form checks, and restJson1 errors with
//! `x-amzn-ErrorType`.

use std::future::Future;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use sluice_tests::mock::client::{self, ExampleRequest, example_sigv4};
use sluice_tests::mock::eventstream::{self, Message};
use sluice_tests::mock::{
    Behaviour, ErrorKind, Fault, MockConfig, MockHandle, MockProvider, ProviderKind, RateLimit,
    token_count,
};

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test exceeded its time bound")
}

async fn start(config: MockConfig) -> MockHandle {
    MockProvider::start(ProviderKind::Bedrock, config)
        .await
        .expect("mock starts")
}

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const MODEL_IN_PATH: &str = "anthropic.claude-3-haiku-20240307-v1%3A0";

async fn converse(mock: &MockHandle, op: &str, auth: &str, body: &Value) -> client::Response {
    client::post_json(
        &format!("{}/model/{MODEL_IN_PATH}/{op}", mock.url()),
        &[("authorization", auth), ("x-amz-date", "20250101T000000Z")],
        body,
    )
    .await
    .expect("response")
}

fn body() -> Value {
    json!({"system": [{"text": "Be brief."}],
           "messages": [{"role": "user", "content": [{"text": "hello"}]}],
           "inferenceConfig": {"maxTokens": 512}})
}

fn sig() -> String {
    example_sigv4("mock-key", "us-east-1")
}

fn frames(r: &client::Response) -> Vec<Message> {
    eventstream::decode_all(&r.body).expect("every frame well-formed, both CRCs valid")
}

#[tokio::test]
async fn converse_non_stream() {
    bounded(async {
        let mock = start(MockConfig::default()).await;
        let r = converse(&mock, "converse", &sig(), &body()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("x-amzn-requestid").is_some());
        let v = r.json();
        assert_eq!(v["output"]["message"]["role"], "assistant");
        let text = v["output"]["message"]["content"][0]["text"]
            .as_str()
            .expect("text");
        assert_eq!(
            text,
            format!("Mock reply from {MODEL}: the last user message had 5 characters.")
        );
        assert_eq!(v["stopReason"], "end_turn");
        assert_eq!(v["usage"]["inputTokens"], 4);
        assert_eq!(v["usage"]["outputTokens"], token_count(text));
        assert_eq!(v["usage"]["totalTokens"], 4 + token_count(text));
        assert!(v["metrics"]["latencyMs"].is_u64());
        assert_eq!(
            mock.requests()[0].path,
            format!("/model/{MODEL_IN_PATH}/converse")
        );
    })
    .await;
}

#[tokio::test]
async fn converse_stream_frames_decoded_and_crc_checked() {
    bounded(async {
        let mock = start(MockConfig::default()).await;
        let r = converse(&mock, "converse-stream", &sig(), &body()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.amazon.eventstream")
        );
        let msgs = frames(&r);
        let types: Vec<&str> = msgs
            .iter()
            .map(|m| m.header(":event-type").expect("type"))
            .collect();
        let n = types.len();
        assert_eq!(types[0], "messageStart");
        assert!(types[1..n - 3].iter().all(|t| *t == "contentBlockDelta"));
        assert_eq!(
            &types[n - 3..],
            ["contentBlockStop", "messageStop", "metadata"]
        );
        for m in &msgs {
            assert_eq!(m.header(":message-type"), Some("event"));
            assert_eq!(m.header(":content-type"), Some("application/json"));
            assert!(
                m.json().expect("json")["p"].is_string(),
                "Bedrock pads payloads"
            );
        }
        assert_eq!(msgs[0].json().expect("j")["role"], "assistant");
        let text: String = msgs[1..n - 3]
            .iter()
            .map(|m| {
                let v = m.json().expect("j");
                assert_eq!(v["contentBlockIndex"], 0);
                v["delta"]["text"].as_str().expect("text").to_owned()
            })
            .collect();
        assert_eq!(
            text,
            format!("Mock reply from {MODEL}: the last user message had 5 characters.")
        );
        assert_eq!(msgs[n - 2].json().expect("j")["stopReason"], "end_turn");
        let meta = msgs[n - 1].json().expect("j");
        assert_eq!(meta["usage"]["inputTokens"], 4);
        assert_eq!(meta["usage"]["outputTokens"], token_count(&text));
        assert!(meta["metrics"]["latencyMs"].is_u64());
    })
    .await;
}

#[tokio::test]
async fn tool_use_stream_and_stop_reasons() {
    bounded(async {
        let mock = start(MockConfig::default()).await;
        let b = json!({"messages": [{"role": "user", "content": [{"text": "weather?"}]}],
                       "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather",
                           "inputSchema": {"json": {"type": "object"}}}}]}});
        let v = converse(&mock, "converse", &sig(), &b).await.json();
        assert_eq!(v["stopReason"], "tool_use");
        let tu = &v["output"]["message"]["content"][0]["toolUse"];
        assert_eq!(tu["name"], "get_weather");
        assert_eq!(tu["input"], json!({"last_user_chars": 8}));

        let msgs = frames(&converse(&mock, "converse-stream", &sig(), &b).await);
        let start = msgs[1].json().expect("j");
        assert_eq!(msgs[1].header(":event-type"), Some("contentBlockStart"));
        assert_eq!(start["start"]["toolUse"]["name"], "get_weather");
        let input: String = msgs
            .iter()
            .filter(|m| m.header(":event-type") == Some("contentBlockDelta"))
            .map(|m| {
                m.json().expect("j")["delta"]["toolUse"]["input"]
                    .as_str()
                    .expect("s")
                    .to_owned()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&input).expect("json"),
            json!({"last_user_chars": 8})
        );

        let b = json!({"messages": [{"role": "user", "content": [{"text": "x"}]}],
                       "inferenceConfig": {"maxTokens": 1}});
        assert_eq!(
            converse(&mock, "converse", &sig(), &b).await.json()["stopReason"],
            "max_tokens"
        );

        mock.enqueue(1, Fault::Refusal);
        assert_eq!(
            converse(&mock, "converse", &sig(), &body()).await.json()["stopReason"],
            "content_filtered"
        );
        mock.enqueue(1, Behaviour::error(ErrorKind::ContentFilter));
        let r = converse(&mock, "converse", &sig(), &body()).await;
        assert_eq!(r.status, StatusCode::OK, "a guardrail blocks inside a 200");
        assert_eq!(r.json()["stopReason"], "guardrail_intervened");
    })
    .await;
}

#[tokio::test]
async fn sigv4_form_is_checked() {
    bounded(async {
        let config = MockConfig {
            region: Some("us-east-1".into()),
            ..MockConfig::default()
        };
        let mock = start(config).await;
        let url = format!("{}/model/{MODEL_IN_PATH}/converse", mock.url());
        let err_type = |r: &client::Response| {
            r.header("x-amzn-errortype")
                .expect("error type")
                .split(':')
                .next()
                .expect("name")
                .to_owned()
        };
        let r = client::post_json(&url, &[], &body()).await.expect("r");
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(err_type(&r), "MissingAuthenticationTokenException");
        assert_eq!(r.json()["message"], "Missing Authentication Token");

        let cases = [
            (
                example_sigv4("other-key", "us-east-1"),
                "UnrecognizedClientException",
            ),
            (
                example_sigv4("mock-key", "eu-west-1"),
                "InvalidSignatureException",
            ),
            (
                sig().replace("/bedrock/", "/s3/"),
                "InvalidSignatureException",
            ),
            (
                sig().replace("Signature=", "Signature=zz"),
                "InvalidSignatureException",
            ),
            (
                sig().replace(", Signature=", ", Sig="),
                "IncompleteSignatureException",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=mock-key/x, SignedHeaders=host, Signature=00".into(),
                "IncompleteSignatureException",
            ),
        ];
        for (auth, expected) in cases {
            let r = converse(&mock, "converse", &auth, &body()).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{auth}");
            assert_eq!(err_type(&r), expected, "{auth}");
        }
        // No x-amz-date.
        let r = client::post_json(&url, &[("authorization", &sig())], &body())
            .await
            .expect("r");
        assert_eq!(err_type(&r), "IncompleteSignatureException");
        // A Bedrock API key as a bearer token.
        let r = converse(&mock, "converse", "Bearer mock-key", &body()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            converse(&mock, "converse", &sig(), &body()).await.status,
            StatusCode::OK
        );
    })
    .await;
}

#[tokio::test]
async fn every_error_kind_has_its_exception() {
    bounded(async {
        let mock = start(MockConfig::default()).await;
        let cases = [
            (ErrorKind::BadRequest, 400, "ValidationException"),
            (ErrorKind::Auth, 403, "UnrecognizedClientException"),
            (ErrorKind::PermissionDenied, 403, "AccessDeniedException"),
            (ErrorKind::NotFound, 404, "ResourceNotFoundException"),
            (ErrorKind::ContextLength, 400, "ValidationException"),
            (ErrorKind::RequestTooLarge, 400, "ValidationException"),
            (
                ErrorKind::RateLimited(RateLimit::default()),
                429,
                "ThrottlingException",
            ),
            (
                ErrorKind::QuotaExhausted,
                400,
                "ServiceQuotaExceededException",
            ),
            (ErrorKind::ServerError, 500, "InternalServerException"),
            (ErrorKind::Overloaded, 503, "ServiceUnavailableException"),
            (ErrorKind::ModelNotReady, 429, "ModelNotReadyException"),
            (ErrorKind::Timeout, 408, "ModelTimeoutException"),
        ];
        let req = ExampleRequest::chat(
            ProviderKind::Bedrock,
            &mock.url(),
            MODEL_IN_PATH,
            "hi",
            false,
        );
        for (kind, status, name) in cases {
            mock.enqueue(1, Behaviour::error(kind.clone()));
            let r = req.send().await.expect("r");
            assert_eq!(r.status.as_u16(), status, "{kind:?}");
            assert_eq!(
                r.header("x-amzn-errortype"),
                Some(
                    format!("{name}:http://internal.amazon.com/coral/com.amazon.bedrock/").as_str()
                ),
                "{kind:?}"
            );
            let v = r.json();
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{kind:?}"
            );
            assert_eq!(
                v.as_object().expect("object").len(),
                1,
                "{kind:?}: only message"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn exception_frames_mid_stream() {
    bounded(async {
        let mock = start(MockConfig::default()).await;
        for (kind, name) in [
            (
                ErrorKind::RateLimited(RateLimit::default()),
                "throttlingException",
            ),
            (ErrorKind::ServerError, "internalServerException"),
            (ErrorKind::Overloaded, "serviceUnavailableException"),
            (ErrorKind::BadRequest, "validationException"),
            (ErrorKind::Timeout, "modelStreamErrorException"),
        ] {
            mock.enqueue(
                1,
                Fault::MidStreamError {
                    after: 3,
                    kind: kind.clone(),
                },
            );
            let r = converse(&mock, "converse-stream", &sig(), &body()).await;
            assert_eq!(r.status, StatusCode::OK);
            let msgs = frames(&r);
            assert_eq!(msgs.len(), 4, "{kind:?}");
            let last = &msgs[3];
            assert_eq!(last.header(":message-type"), Some("exception"), "{kind:?}");
            assert_eq!(last.header(":exception-type"), Some(name), "{kind:?}");
            let v = last.json().expect("json");
            assert!(v["message"].is_string());
            if name == "modelStreamErrorException" {
                assert_eq!(v["originalStatusCode"], 408);
            }
        }
    })
    .await;
}

#[tokio::test]
async fn signatures_are_verified_when_the_mock_has_the_secret() {
    use sluice_tests::mock::sigv4::{Scope, SignedRequest, authorization};
    bounded(async {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let config = MockConfig {
            api_key: Some("AKIDEXAMPLE".into()),
            aws_secret_key: Some(secret.into()),
            ..MockConfig::default()
        };
        let mock = start(config).await;
        let host = mock.addr().to_string();
        let path = format!("/model/{MODEL_IN_PATH}/converse");
        let payload = body().to_string();
        let date = "20250101T000000Z";
        let sign = |body: &str| {
            authorization(
                &SignedRequest {
                    method: "POST",
                    path: &path,
                    query: None,
                    headers: vec![
                        ("content-type".into(), "application/json".into()),
                        ("host".into(), host.clone()),
                        ("x-amz-date".into(), date.into()),
                    ],
                    body: body.as_bytes(),
                },
                &Scope {
                    access_key_id: "AKIDEXAMPLE",
                    amz_date: date,
                    region: "us-west-2",
                    service: "bedrock",
                },
                secret,
            )
        };
        let url = format!("{}{path}", mock.url());
        let send = |auth: String, body: String| {
            let url = url.clone();
            async move {
                client::send(
                    http::Method::POST,
                    &url,
                    &[
                        ("authorization", auth.as_str()),
                        ("x-amz-date", date),
                        ("content-type", "application/json"),
                    ],
                    body,
                )
                .await
                .expect("response")
            }
        };
        let r = send(sign(&payload), payload.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        // The same signature over a different body no longer matches.
        let r = send(sign(&payload), payload.replace("hello", "HELLO")).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(
            r.header("x-amzn-errortype")
                .expect("type")
                .starts_with("InvalidSignatureException:")
        );
    })
    .await;
}

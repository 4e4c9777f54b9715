//! The OpenAI mock over loopback: success bodies, the SSE stream frame by
//! frame (usage chunk, tool-call deltas, `[DONE]`), embeddings and models,
//! auth, every scripted error's status, body and headers, rate-limit hints.

use std::future::Future;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use sluice_tests::mock::client::{self, ExampleRequest, SseEvent};
use sluice_tests::mock::{
    Behaviour, ErrorKind, Fault, MockConfig, MockHandle, MockProvider, ProviderKind, RateLimit,
    token_count,
};

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test exceeded its time bound")
}

async fn start(kind: ProviderKind, config: MockConfig) -> MockHandle {
    MockProvider::start(kind, config)
        .await
        .expect("mock starts")
}

const AUTH: (&str, &str) = ("authorization", "Bearer mock-key");

async fn chat(mock: &MockHandle, body: Value) -> client::Response {
    client::post_json(
        &format!("{}/v1/chat/completions", mock.url()),
        &[AUTH],
        &body,
    )
    .await
    .expect("response")
}

fn events(r: &client::Response) -> Vec<SseEvent> {
    client::sse_events(&r.text())
}

#[tokio::test]
async fn chat_completion_non_stream() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        let r = chat(
            &mock,
            json!({"model": "gpt-4o", "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hello"},
            ]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            r.header("x-request-id")
                .expect("request id")
                .starts_with("req_")
        );
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("10000"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("9999"));
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-4o");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(choice["message"]["role"], "assistant");
        let text = choice["message"]["content"].as_str().expect("text");
        assert_eq!(
            text,
            "Mock reply from gpt-4o: the last user message had 5 characters."
        );
        // "You are terse.\nhello" is 20 characters: 5 tokens.
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        assert_eq!(v["usage"]["completion_tokens"], token_count(text));
        assert_eq!(v["usage"]["total_tokens"], 5 + token_count(text));
        let rec = &mock.requests()[0];
        assert_eq!(rec.header("authorization"), Some("Bearer mock-key"));
        assert_eq!(rec.json.as_ref().expect("json")["model"], "gpt-4o");
    })
    .await;
}

#[tokio::test]
async fn chat_stream_with_usage_frame_by_frame() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        let body = json!({"model": "gpt-4o-mini", "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "count to three"}]});
        let r = chat(&mock, body).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        let evs = events(&r);
        assert_eq!(evs.last().expect("events").data, "[DONE]");
        let chunks: Vec<Value> = evs[..evs.len() - 1].iter().map(SseEvent::json).collect();
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "gpt-4o-mini");
            if c["choices"] != json!([]) {
                assert!(c["obfuscation"].is_string(), "obfuscation is on by default");
            }
        }
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks[0]["usage"].is_null() && chunks[0].get("usage").is_some());
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            text,
            "Mock reply from gpt-4o-mini: the last user message had 14 characters."
        );
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 4);
        assert_eq!(usage["usage"]["completion_tokens"], token_count(&text));
    })
    .await;
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        let r = chat(
            &mock,
            json!({"model": "m", "stream": true, "stream_options": {"include_obfuscation": false},
                   "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        let evs = events(&r);
        assert!(evs.iter().all(|e| e.json().get("usage").is_none()));
        assert!(evs.iter().all(|e| e.json().get("obfuscation").is_none()));
        assert!(evs[evs.len() - 2].json()["choices"][0]["finish_reason"] == "stop");
    })
    .await;
}

#[tokio::test]
async fn tool_calls_non_stream_and_stream() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {}}}}]);
        let msgs = json!([{"role": "user", "content": "weather in Paris?"}]);
        let r = chat(
            &mock,
            json!({"model": "m", "tools": tools, "messages": msgs}),
        )
        .await;
        let v = r.json();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        assert!(call["id"].as_str().expect("id").starts_with("call_"));
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().expect("args"))
                .expect("arguments are JSON");
        assert_eq!(args, json!({"last_user_chars": 17}));

        let r = chat(
            &mock,
            json!({"model": "m", "tools": tools, "messages": msgs, "stream": true}),
        )
        .await;
        let evs = events(&r);
        let first = evs[0].json();
        let tc = &first["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(tc["index"], 0);
        assert_eq!(tc["function"]["name"], "get_weather");
        assert_eq!(tc["function"]["arguments"], "");
        let fragments: Vec<String> = evs[1..]
            .iter()
            .filter_map(|e| {
                e.json()["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(fragments.len(), 3);
        assert!(
            serde_json::from_str::<Value>(&fragments[0]).is_err(),
            "partial JSON"
        );
        let joined: Value = serde_json::from_str(&fragments.concat()).expect("whole JSON");
        assert_eq!(joined, json!({"last_user_chars": 17}));
        assert_eq!(
            evs[evs.len() - 2].json()["choices"][0]["finish_reason"],
            "tool_calls"
        );

        // Once the tool result is back, the model answers in text.
        let msgs = json!([
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ]);
        let r = chat(
            &mock,
            json!({"model": "m", "tools": tools, "messages": msgs}),
        )
        .await;
        assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
    })
    .await;
}

#[tokio::test]
async fn max_tokens_cuts_with_length() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        let r = chat(
            &mock,
            json!({"model": "m", "max_completion_tokens": 3,
                   "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        let v = r.json();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 3);
    })
    .await;
}

#[tokio::test]
async fn auth_is_checked_with_openai_bodies() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        let url = format!("{}/v1/chat/completions", mock.url());
        let body = json!({"model": "m", "messages": []});
        let r = client::post_json(&url, &[], &body).await.expect("r");
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let e = &r.json()["error"];
        assert!(
            e["message"]
                .as_str()
                .expect("msg")
                .starts_with("You didn't provide an API key")
        );
        assert!(e["code"].is_null());
        let r = client::post_json(
            &url,
            &[("authorization", "Bearer sk-wrong-secret-key-9876")],
            &body,
        )
        .await
        .expect("r");
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let e = &r.json()["error"];
        assert_eq!(e["code"], "invalid_api_key");
        assert_eq!(e["type"], "invalid_request_error");
        let msg = e["message"].as_str().expect("msg");
        assert!(
            msg.contains("9876") && !msg.contains("wrong-secret"),
            "masked: {msg}"
        );
    })
    .await;
}

#[tokio::test]
async fn bad_json_unknown_path_models_and_embeddings() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        let r = client::send(
            Method::POST,
            &format!("{}/v1/chat/completions", mock.url()),
            &[AUTH],
            "{not json",
        )
        .await
        .expect("r");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.json()["error"]["message"].as_str().expect("m").contains("parse the JSON body"));

        let r = client::send(Method::POST, &format!("{}/v1/nope", mock.url()), &[AUTH], "")
            .await
            .expect("r");
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json()["error"]["message"], "Invalid URL (POST /v1/nope)");

        let r = client::send(Method::GET, &format!("{}/v1/models", mock.url()), &[AUTH], "")
            .await
            .expect("r");
        assert_eq!(r.json()["object"], "list");
        assert_eq!(r.json()["data"][0]["object"], "model");

        let r = client::post_json(
            &format!("{}/v1/embeddings", mock.url()),
            &[AUTH],
            &json!({"model": "text-embedding-3-small", "input": ["abcd", "abcdefgh"], "dimensions": 4}),
        )
        .await
        .expect("r");
        let v = r.json();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][1]["index"], 1);
        let e: Vec<f64> = serde_json::from_value(v["data"][0]["embedding"].clone()).expect("floats");
        assert_eq!(e.len(), 4);
        assert!((e.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    })
    .await;
}

#[tokio::test]
async fn every_error_kind_has_its_status_type_and_code() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        let cases: Vec<(ErrorKind, u16, &str, Value)> = vec![
            (
                ErrorKind::BadRequest,
                400,
                "invalid_request_error",
                json!("invalid_type"),
            ),
            (
                ErrorKind::Auth,
                401,
                "invalid_request_error",
                json!("invalid_api_key"),
            ),
            (
                ErrorKind::PermissionDenied,
                403,
                "request_forbidden",
                json!("unsupported_country_region_territory"),
            ),
            (
                ErrorKind::NotFound,
                404,
                "invalid_request_error",
                json!("model_not_found"),
            ),
            (
                ErrorKind::ContextLength,
                400,
                "invalid_request_error",
                json!("context_length_exceeded"),
            ),
            (
                ErrorKind::ContentFilter,
                400,
                "invalid_request_error",
                json!("content_policy_violation"),
            ),
            (
                ErrorKind::RequestTooLarge,
                413,
                "invalid_request_error",
                json!("string_above_max_length"),
            ),
            (
                ErrorKind::RateLimited(RateLimit::default()),
                429,
                "requests",
                json!("rate_limit_exceeded"),
            ),
            (
                ErrorKind::QuotaExhausted,
                429,
                "insufficient_quota",
                json!("insufficient_quota"),
            ),
            (ErrorKind::ServerError, 500, "server_error", Value::Null),
            (ErrorKind::Overloaded, 503, "server_error", Value::Null),
            (ErrorKind::Timeout, 504, "server_error", Value::Null),
        ];
        let req = ExampleRequest::chat(ProviderKind::OpenAi, &mock.url(), "gpt-4o", "hi", false);
        for (kind, status, ty, code) in cases {
            mock.enqueue(1, Behaviour::error(kind.clone()));
            let r = req.send().await.expect("response");
            assert_eq!(r.status.as_u16(), status, "{kind:?}");
            let e = &r.json()["error"];
            assert_eq!(e["type"], ty, "{kind:?}");
            assert_eq!(e["code"], code, "{kind:?}");
            assert!(
                e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{kind:?}"
            );
            assert!(
                e.get("param").is_some(),
                "{kind:?}: param is always present"
            );
            assert!(r.header("x-request-id").is_some(), "{kind:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn rate_limit_headers_and_garbage_hints() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        let req = ExampleRequest::chat(ProviderKind::OpenAi, &mock.url(), "gpt-4o", "hi", false);
        mock.enqueue(
            1,
            Behaviour::error(ErrorKind::RateLimited(RateLimit::after(
                Duration::from_millis(1500),
            ))),
        );
        let r = req.send().await.expect("r");
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.header("retry-after"), Some("2"));
        assert_eq!(r.header("retry-after-ms"), Some("1500"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
        assert_eq!(r.header("x-ratelimit-reset-requests"), Some("1.5s"));
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .expect("m")
                .contains("Please try again in 1.5s")
        );

        mock.enqueue(
            1,
            Behaviour::error(ErrorKind::RateLimited(RateLimit::after(
                Duration::from_secs(360),
            ))),
        );
        let r = req.send().await.expect("r");
        assert_eq!(r.header("x-ratelimit-reset-requests"), Some("6m0s"));
        assert_eq!(r.header("retry-after"), Some("360"));

        mock.enqueue(
            1,
            Behaviour::error(ErrorKind::RateLimited(RateLimit {
                retry_after: None,
                retry_after_raw: Some("soon".into()),
            })),
        );
        let r = req.send().await.expect("r");
        assert_eq!(r.header("retry-after"), Some("soon"));
        assert_eq!(r.header("retry-after-ms"), None);
    })
    .await;
}

#[tokio::test]
async fn configured_models_and_context_window_fail_on_their_own() {
    bounded(async {
        let config = MockConfig {
            models: vec!["small".into(), "large".into()],
            context_window: Some(10),
            ..MockConfig::default()
        };
        let mock = start(ProviderKind::OpenAi, config).await;
        let r = chat(&mock, json!({"model": "other", "messages": [{"role": "user", "content": "hi"}]})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json()["error"]["code"], "model_not_found");
        assert_eq!(
            r.json()["error"]["message"],
            "The model `other` does not exist or you do not have access to it."
        );
        // 41 characters: 11 tokens > 10.
        let long = "a".repeat(41);
        let r = chat(&mock, json!({"model": "small", "messages": [{"role": "user", "content": long}]})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let e = &r.json()["error"];
        assert_eq!(e["code"], "context_length_exceeded");
        assert_eq!(
            e["message"],
            "This model's maximum context length is 10 tokens. However, your messages resulted in 11 tokens. Please reduce the length of the messages."
        );
        let r = chat(&mock, json!({"model": "small", "messages": [{"role": "user", "content": "a"}]})).await;
        assert_eq!(r.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn mid_stream_error_is_a_data_error_event_without_done() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        mock.enqueue(
            1,
            Fault::MidStreamError {
                after: 3,
                kind: ErrorKind::ServerError,
            },
        );
        let r = ExampleRequest::chat(ProviderKind::OpenAi, &mock.url(), "m", "hi", true)
            .send()
            .await
            .expect("r");
        assert_eq!(r.status, StatusCode::OK);
        let evs = events(&r);
        assert_eq!(evs.len(), 4);
        assert!(evs.iter().all(|e| e.data != "[DONE]"));
        assert_eq!(evs[3].json()["error"]["type"], "server_error");
    })
    .await;
}

#[tokio::test]
async fn refusal_uses_the_refusal_field() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi, MockConfig::default()).await;
        mock.set_default(Fault::Refusal);
        let req = ExampleRequest::chat(ProviderKind::OpenAi, &mock.url(), "m", "hi", false);
        let v = req.send().await.expect("r").json();
        let msg = &v["choices"][0]["message"];
        assert!(msg["content"].is_null());
        assert_eq!(msg["refusal"], "I'm sorry, but I can't help with that.");
        let r = ExampleRequest::chat(ProviderKind::OpenAi, &mock.url(), "m", "hi", true)
            .send()
            .await
            .expect("r");
        let refusal: String = events(&r)
            .iter()
            .filter_map(|e| {
                e.json()["choices"][0]["delta"]["refusal"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(refusal, "I'm sorry, but I can't help with that.");
    })
    .await;
}
